"""README's result lines, rendered from the committed metrics files (never typed by hand).

    python scripts/readme_results.py [--reporting data/08_reporting]

Prints the row of the committed `dvc repro` run (``metrics.json``: paired differences of the judge on the
train and held-out splits, quality on train) and the ShapesEval line (``shapeseval.json``: test-set
accuracy and mean judge, base → fine-tuned, with the paired 95 % CI) and the probe's line (``finetune_probe.csv``:
test accuracy during training) and the paper-claims paragraph (``paper_claims.json``, written by
``scripts/paper_claims.py``: each claim's verdict, effect and interval, seeds and budget). ``tests/test_readme.py`` fails when
README.md does not contain these lines exactly, so a new run's numbers reach README by pasting this output.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci(difference: dict) -> str:
    return f"{difference['mean']:+.3f} [{difference['ci_low']:+.3f}, {difference['ci_high']:+.3f}]"


def committed_run_row(metrics: dict) -> str:
    """The results table's row of the committed run."""
    train, heldout = metrics["per_split"]["train"], metrics["per_split"]["heldout"]
    quality = train["shapes_quality"]
    return (
        f"| `dvc repro`, seed 0, 1 thread (the committed `metrics.json`) | **{_ci(train['shapes_judge']['difference'])}** "
        f"| {_ci(heldout['shapes_judge']['difference'])} | {quality['base']['mean']:.3f} → {quality['finetuned']['mean']:.3f} |"
    )


def shapeseval_line(shapeseval: dict) -> str:
    """One sentence: ShapesEval's test-set accuracy and judge, base → fine-tuned."""
    overall = shapeseval["overall"]
    accuracy, judge = overall["accuracy"], overall["shapes_judge"]
    categories = ", ".join(
        f"{name} {values['accuracy']['difference']['mean']:+.2f}" for name, values in shapeseval["per_category"].items()
    )
    return (
        f"ShapesEval ({shapeseval['n_prompts']} test prompts × {shapeseval['n_images'] // shapeseval['n_prompts']} seeds): "
        f"accuracy {accuracy['base']['mean']:.3f} → {accuracy['finetuned']['mean']:.3f}, "
        f"{_ci(accuracy['difference'])} ({categories}); mean judge {_ci(judge['difference'])}."
    )


def probe_line(probe: list[dict[str, str]]) -> str:
    """One sentence: the probe's test accuracy before training, at its best and after the last round."""
    first, last = probe[0], probe[-1]
    best = max(probe, key=lambda row: float(row["accuracy"]))
    return (
        f"Probe during training ({float(first['images']):.0f} test images, `finetune_probe.csv`): accuracy "
        f"{float(first['accuracy']):.3f} at 0 reward calls, {float(best['accuracy']):.3f} at its best "
        f"({int(float(best['reward_calls']))} calls), {float(last['accuracy']):.3f} after the last round "
        f"({int(float(last['reward_calls']))} calls)."
    )


# Each claim's primary comparison, as the reader should read its effect.
CLAIMS = {
    1: ("DPOK beats reward-weighted SFT, keeping quality", "Δ judge DPOK − SFT"),
    2: ("the KL term prevents over-optimisation", "quality × base, with KL − without"),
    3: ("the value function saves samples", "mean training reward, with − without"),
}


def _claim_text(claim: dict) -> str:
    name, effect = CLAIMS[claim["claim"]]
    if "effect" not in claim:  # not run yet
        return f"{claim['claim']}. {name}: {claim['verdict_text']}"
    seeds = " and ".join(sorted({str(n) for n in claim["seeds"].values()}))
    calls = "/".join(f"{c:,}" for c in claim["reward_calls_per_run"])
    budget = "" if "reward calls" in claim["verdict_text"] else f", {calls} reward calls a run"
    text = (f"{claim['claim']}. {name}: **{claim['verdict_text']}** ({effect} {claim['effect']:+.3f} "
            f"[{claim['ci_low']:+.3f}, {claim['ci_high']:+.3f}], {seeds} seeds an arm{budget}")
    per_category = claim.get("per_category") or {}
    if per_category:
        text += "; per category: " + ", ".join(f"{c} {p['verdict']}" for c, p in per_category.items())
    return text + ")"


def claims_paragraph(claims: dict) -> str:
    """One paragraph: the three verdicts as scripts/paper_claims.py computed them."""
    runs = sum(len(arm["sample_budget_per_run"]) for arm in claims.get("runs_per_arm", {}).values())
    return (f"Verdicts ({runs} runs; `python scripts/paper_claims.py`): "
            + "; ".join(_claim_text(c) for c in claims["claims"]) + ".")


def lines(reporting: Path) -> list[str]:
    metrics = json.loads((reporting / "metrics.json").read_text())
    shapeseval = json.loads((reporting / "shapeseval.json").read_text())
    with (reporting / "finetune_probe.csv").open() as handle:
        probe = list(csv.DictReader(handle))
    claims = json.loads((reporting / "paper_claims.json").read_text())
    return [committed_run_row(metrics), shapeseval_line(shapeseval), probe_line(probe), claims_paragraph(claims)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reporting", default=str(ROOT / "data/08_reporting"))
    args = parser.parse_args(argv)
    print("\n".join(lines(Path(args.reporting))))


if __name__ == "__main__":
    main()
