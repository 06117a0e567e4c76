"""The shipped prompt sets: what RL fine-tunes on and what the evaluation reports on.

Why the sets look as they do:

- **Train (12 prompts, 3 per category, split "train").** The paper fine-tunes on prompts the
  pretrained model gets wrong, so RL has room to improve. Under the default :class:`CaptionSkew`, two
  of each category's three prompts are *rare* (a rare colour-shape pair, four objects or the bottom
  side), which the base model saw about 500 times less often than common prompts (``rare_factor``
  0.002). The third is *common*: a control on which the base model is already good, where fine-tuning should keep (not
  destroy) what pretraining taught. That is the KL regulariser's job, and the report can show it.
- **Eval (22 rows).** All train prompts (split "train": does RL improve what it trained on?) plus 10
  held-out prompts (split "heldout"): the skew's *unseen* prompts (never captions in pretraining:
  compositional generalisation), two rare and two common prompts outside the train set (does the
  improvement transfer; is the rest of the model intact?). All three rarities appear among the
  held-out prompts and common and rare ones among the train prompts, so a report can compare
  common / rare / unseen.

``python -m dpok.world.prompt_sets [DIRECTORY]`` rewrites ``shapes_train.csv`` and
``shapes_eval.csv`` (default directory ``data/01_raw/prompts``, relative to the project root);
a test checks the shipped files equal :func:`make_prompt_sets` so they cannot drift.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from dpok.world.grammar import CATEGORIES, parse_prompt
from dpok.world.skew import CaptionSkew

DEFAULT_TRAIN_PROMPTS: tuple[str, ...] = (
    # color
    "a green triangle",
    "a yellow circle",
    "a blue square",
    # count
    "four red squares",
    "two green triangles",
    "three blue circles",
    # composition
    "a green triangle and a blue circle",
    "a yellow circle and a red square",
    "a red triangle and a blue square",
    # location
    "a green triangle on the left",
    "a blue square at the bottom",
    "a red circle on the right",
)
# Held out besides the skew's unseen prompts: two rare, two common.
DEFAULT_HELDOUT_SEEN_PROMPTS: tuple[str, ...] = (
    "four blue triangles",
    "a yellow circle at the bottom",
    "a red circle",
    "a green square and a yellow triangle",
)
COLUMNS = ("prompt", "category", "split", "rarity")
TRAIN_FILE = "shapes_train.csv"
EVAL_FILE = "shapes_eval.csv"
DEFAULT_DIRECTORY = Path("data/01_raw/prompts")


def _canonical(prompts: Sequence[str], name: str) -> list[str]:
    canonical = [parse_prompt(prompt).prompt for prompt in prompts]
    duplicates = sorted({prompt for prompt in canonical if canonical.count(prompt) > 1})
    if duplicates:
        raise ValueError(f"{name} lists {duplicates} more than once")
    return canonical


def make_prompt_sets(
    skew: CaptionSkew | None = None,
    train_prompts: Sequence[str] = DEFAULT_TRAIN_PROMPTS,
    heldout_prompts: Sequence[str] | None = None,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and eval rows ``{"prompt", "category", "split", "rarity"}`` (deterministic order).

    Args:
        skew: the pretraining caption skew that decides each prompt's rarity (default ``CaptionSkew()``).
        train_prompts: the RL training prompts.
        heldout_prompts: eval-only prompts; by default the skew's unseen prompts followed by
            :data:`DEFAULT_HELDOUT_SEEN_PROMPTS`, leaving out any that are train prompts.

    Raises:
        ValueError: a prompt outside the grammar, a duplicate, or a prompt both trained on and held out.
    """
    skew = CaptionSkew() if skew is None else skew
    train = _canonical(train_prompts, "train_prompts")
    if heldout_prompts is None:
        heldout = [p for p in (*skew.unseen_prompts, *DEFAULT_HELDOUT_SEEN_PROMPTS) if p not in train]
    else:
        heldout = _canonical(heldout_prompts, "heldout_prompts")
        overlap = sorted(set(heldout) & set(train))
        if overlap:
            raise ValueError(f"prompts {overlap} are both train and held-out prompts; a prompt can be only one")
    heldout = _canonical(heldout, "heldout_prompts")

    def row(prompt: str, split: str) -> dict[str, str]:
        spec = parse_prompt(prompt)
        return {"prompt": prompt, "category": spec.category, "split": split, "rarity": skew.rarity(spec)}

    def by_category(prompts: list[str]) -> list[str]:
        return sorted(prompts, key=lambda prompt: CATEGORIES.index(parse_prompt(prompt).category))

    train_rows = [row(prompt, "train") for prompt in by_category(train)]
    eval_rows = [dict(r) for r in train_rows] + [row(prompt, "heldout") for prompt in by_category(heldout)]
    return train_rows, eval_rows


def write_prompt_sets(directory: str | Path = DEFAULT_DIRECTORY, skew: CaptionSkew | None = None) -> tuple[Path, Path]:
    """Write ``shapes_train.csv`` and ``shapes_eval.csv`` into ``directory``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train_rows, eval_rows = make_prompt_sets(skew)
    paths = directory / TRAIN_FILE, directory / EVAL_FILE
    for path, rows in zip(paths, (train_rows, eval_rows)):
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return paths


def read_prompt_set(path: str | Path) -> list[dict[str, str]]:
    """Rows of a prompt-set CSV written by :func:`write_prompt_sets`."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return [dict(row) for row in csv.DictReader(handle)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the shapes-world prompt-set CSVs.")
    parser.add_argument(
        "directory", nargs="?", default=str(DEFAULT_DIRECTORY), help="output folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    for path in write_prompt_sets(args.directory):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
