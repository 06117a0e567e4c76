"""ShapesEval: a fixed, GenEval-style split of the whole shapes-world grammar into training and test prompts.

GenEval (Ghosh et al., 2023) scores a text-to-image model on one fixed prompt list, per category, with an
object detector as the judge. ShapesEval does the same on the shapes world, whose judge is exact, and fixes
*which* prompts a model may train on, so that a fine-tuned model is scored on prompts it never saw.

The split, decided by the prompt text alone (nothing here looks at any model's images):

1. within each category of :data:`~dpok.world.grammar.CATEGORIES`, the grammar's prompts are ordered by the
   salted SHA-256 of their text (:func:`dpok.prompts.headroom.prompt_hash`);
2. the first ``round(test_fraction × n)`` go to ``test``, at least one and never all of them, so every
   category is on both sides;
3. of the rest (the *training pool*), the first ``round(validation_fraction × pool)`` go to ``validation``
   (for choosing settings and checkpoints without touching ``test``), the others to ``train``.

Every test prompt is tagged so that a report can tell generalisation from recall:

- ``novel_pair``: one of its colour–shape pairs ("red circle") occurs in no training-pool prompt;
- ``novel_combination``: a composition prompt whose two objects appear together in no training-pool prompt,
  in either order ("a red circle and a blue square" is not novel when "a blue square and a red circle" is in
  the pool); False for the other categories, whose prompts name one object group;
- ``objects``: compositional depth, the number of objects an image of the prompt shows (1–4).

Training-pool rows carry ``novel_pair = novel_combination = False`` and their depth.

The table is written once, to ``data/01_raw/prompts/shapeseval.csv`` (``python scripts/make_shapeseval.py``);
``tests/prompts/test_shapeseval.py`` regenerates it from ``conf/base/parameters_shapeseval.yml`` and fails when
the file and the configuration drift apart. :func:`check_split_table` is the gate a pipeline reading the file
passes first: any bad line is one :class:`ShapesEvalFileError` naming the file, the line and the fix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from dpok.config import Settings
from dpok.prompts.headroom import prompt_hash
from dpok.world.grammar import CATEGORIES, PromptGrammarError, PromptSpec, enumerate_prompts, parse_prompt

SPLITS = ("train", "validation", "test")
TRAINING_POOL = ("train", "validation")
COLUMNS = ("prompt", "category", "split", "novel_pair", "novel_combination", "objects")
SPLIT_FILE = "data/01_raw/prompts/shapeseval.csv"
"""Where the split is committed, relative to the project root (the catalog's ``shapeseval_prompts``)."""
REGENERATE = "python scripts/make_shapeseval.py"


class ShapesEvalFileError(ValueError):
    """A ShapesEval split table that cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class ShapesEvalSplit(Settings):
    """How the grammar is split (``parameters_shapeseval.yml``, key ``shapeseval.split``).

    Changing a value makes a different benchmark: rewrite the file (``python scripts/make_shapeseval.py``)
    and compare no number across the two.

    Attributes:
        test_fraction: Share of each category's prompts put in ``test`` (rounded; at least one prompt,
            never the whole category).
        validation_fraction: Share of each category's remaining prompts (the training pool) put in
            ``validation`` (rounded; at least one where it is > 0, never the whole pool).
        hash_salt: Salt of the hash that orders the prompts; another salt is another, equally fair draw.
    """

    KEY_PATH: ClassVar[str] = "shapeseval.split"

    test_fraction: float
    validation_fraction: float
    hash_salt: str

    def __post_init__(self) -> None:
        self.number("test_fraction", gt=0, lt=1)
        self.number("validation_fraction", ge=0, lt=1)
        if not isinstance(self.hash_salt, str) or not self.hash_salt:
            self.fail("hash_salt", "a non-empty string")


def _round_half_up(value: float) -> int:
    # Python's round() rounds halves to even; a documented split should not depend on that subtlety.
    return math.floor(value + 0.5)


def _quota(fraction: float, n: int, *, at_least_one: bool) -> int:
    """``round(fraction × n)``, kept in [1 (where asked and ``fraction`` > 0), n − 1]."""
    wanted = _round_half_up(fraction * n)
    if at_least_one and fraction > 0:
        wanted = max(wanted, 1)
    return max(0, min(wanted, n - 1))


def _colour_shape_pairs(spec: PromptSpec) -> frozenset[tuple[str, str]]:
    return frozenset((group.color, group.shape) for group in spec.groups)


def novelty_tags(table: pd.DataFrame) -> pd.DataFrame:
    """``novel_pair``, ``novel_combination`` and ``objects`` for every row of a table with canonical
    ``prompt`` and ``split`` columns, judged against the table's own training pool (module docstring)."""
    specs = [parse_prompt(prompt) for prompt in table["prompt"]]
    in_pool = table["split"].isin(TRAINING_POOL).to_numpy()
    pool_pairs: set[tuple[str, str]] = set()
    pool_combinations: set[frozenset[tuple[str, str]]] = set()
    for spec, pooled in zip(specs, in_pool):
        if pooled:
            pool_pairs |= _colour_shape_pairs(spec)
            if spec.category == "composition":
                pool_combinations.add(_colour_shape_pairs(spec))
    is_test = ~in_pool
    return pd.DataFrame(
        {
            "novel_pair": [bool(test and not _colour_shape_pairs(spec) <= pool_pairs)
                           for spec, test in zip(specs, is_test)],
            "novel_combination": [bool(test and spec.category == "composition"
                                       and _colour_shape_pairs(spec) not in pool_combinations)
                                  for spec, test in zip(specs, is_test)],
            "objects": [spec.num_objects for spec in specs],
        },
        index=table.index,
    )


def build_split(config: ShapesEvalSplit, prompts: Iterable[str] | None = None) -> pd.DataFrame:
    """The ShapesEval table (:data:`COLUMNS`) of ``prompts`` (default: every prompt of the grammar), in the
    order given (the grammar's: category, then colour and shape)."""
    prompts = enumerate_prompts() if prompts is None else [parse_prompt(p).prompt for p in prompts]
    table = pd.DataFrame({"prompt": prompts, "category": [parse_prompt(p).category for p in prompts]})
    split_of: dict[str, str] = {}
    for _, group in table.groupby("category", sort=False):
        ordered = sorted(group["prompt"], key=lambda p: prompt_hash(p, config.hash_salt))
        n_test = _quota(config.test_fraction, len(ordered), at_least_one=True)
        pool = ordered[n_test:]
        n_validation = _quota(config.validation_fraction, len(pool), at_least_one=True)
        split_of |= {p: "test" for p in ordered[:n_test]}
        split_of |= {p: "validation" for p in pool[:n_validation]}
        split_of |= {p: "train" for p in pool[n_validation:]}
    table["split"] = table["prompt"].map(split_of)
    table = table.join(novelty_tags(table))
    return table[list(COLUMNS)].reset_index(drop=True)


def split_csv_text(table: pd.DataFrame) -> str:
    """The table as the committed file's text (one formatter for the writer and the drift test)."""
    return table[list(COLUMNS)].to_csv(index=False, lineterminator="\n")


def write_split(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the table to ``path`` through a temporary file and one rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(split_csv_text(table), encoding="utf-8", newline="")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def split_sizes(table: pd.DataFrame) -> pd.DataFrame:
    """Prompts per category (rows, grammar order) and split (columns), with totals."""
    counts = pd.crosstab(table["category"], table["split"], margins=True, margins_name="all")
    order = [c for c in CATEGORIES if c in counts.index] + ["all"]
    return counts.reindex(index=order, columns=[*SPLITS, "all"], fill_value=0)


# --- the gate before any sampling --------------------------------------------------------------------


def _boolean(value: Any) -> bool | None:
    """A CSV cell as a boolean (pandas reads True/False; text true/false too), or None when it is not one."""
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}.get(str(value).strip().lower())


def check_split_table(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """The table with canonical prompt text, after refusing anything a benchmark cannot rest on.

    ``source`` names the file in the messages (e.g. ``"data/01_raw/prompts/shapeseval.csv"``). Line numbers
    count the header as line 1, as an editor shows them. Raises :class:`ShapesEvalFileError` for: a missing
    column; a prompt outside the grammar; a category or split that is not the prompt's; a prompt on two lines
    (in particular in the training pool and in ``test``); a category without ``train`` or ``test`` prompts;
    tags that are not what the split implies (the file was edited by hand).
    """

    def fail(problem: str, fix: str) -> ShapesEvalFileError:
        return ShapesEvalFileError(f"ShapesEval split {source}: {problem.rstrip('.')}. Fix: {fix}")

    def line(index: int) -> int:
        return int(index) + 2

    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise fail(f"missing column(s) {missing} (expected {list(COLUMNS)})", f"regenerate it with `{REGENERATE}`")
    if table.empty:
        raise fail("no prompts", f"regenerate it with `{REGENERATE}`")
    table = table.reset_index(drop=True)
    canonical, first_line = [], {}
    for index, row in table.iterrows():
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise fail(f"line {line(index)} has no prompt text", "give every line a prompt or delete the line")
        try:
            spec = parse_prompt(prompt)
        except PromptGrammarError as error:
            raise fail(
                f"line {line(index)}: {error}",
                f"write the prompt in the grammar (docs/shapes_world.md) or delete the line; `{REGENERATE}` "
                "rewrites the whole split",
            ) from None
        if row["category"] != spec.category:
            raise fail(f"line {line(index)}: {prompt!r} is a {spec.category!r} prompt, not {row['category']!r}",
                       f"set its category to {spec.category}")
        if row["split"] not in SPLITS:
            raise fail(f"line {line(index)}: split {row['split']!r} of {prompt!r} is not one of {list(SPLITS)}",
                       "use train, validation or test")
        if spec.prompt in first_line:
            earlier = first_line[spec.prompt]
            sides = {table.at[earlier, "split"], row["split"]}
            what = ("is both in the training pool and in test" if "test" in sides and sides & set(TRAINING_POOL)
                    else "appears twice")
            raise fail(f"{spec.prompt!r} {what} (lines {line(earlier)}: {table.at[earlier, 'split']}, "
                       f"{line(index)}: {row['split']})", "keep one of the two lines")
        first_line[spec.prompt] = index
        canonical.append(spec.prompt)
    table["prompt"] = canonical
    for split in ("train", "test"):
        empty = [c for c in CATEGORIES if not ((table["category"] == c) & (table["split"] == split)).any()]
        if empty:
            raise fail(f"no {split} prompt in categories {empty}: every category must be on both sides",
                       f"move a prompt of each to {split}, or regenerate it with `{REGENERATE}`")
    expected = novelty_tags(table)
    for column in ("novel_pair", "novel_combination", "objects"):
        for index, value in table[column].items():
            value = value.item() if hasattr(value, "item") else value  # numpy scalars as a reader writes them
            got = _boolean(value) if column != "objects" else value
            wanted = expected.at[index, column].item()
            if got is None or got != wanted:
                raise fail(
                    f"line {line(index)}: {column} of {table.at[index, 'prompt']!r} is {value!r}, but the split "
                    f"makes it {wanted!r} (the tags were edited or the splits changed by hand)",
                    f"regenerate it with `{REGENERATE}`",
                )
    return table.assign(**{column: expected[column] for column in expected.columns})[list(COLUMNS)]


def benchmark_prompts(table: pd.DataFrame) -> pd.DataFrame:
    """The ``test`` rows of a checked table: the prompts a model is scored on (prompt, category, split, tags)."""
    return table[table["split"] == "test"].reset_index(drop=True)


__all__ = [
    "COLUMNS",
    "SPLITS",
    "SPLIT_FILE",
    "ShapesEvalFileError",
    "ShapesEvalSplit",
    "benchmark_prompts",
    "build_split",
    "check_split_table",
    "novelty_tags",
    "split_csv_text",
    "split_sizes",
    "write_split",
]
