"""A markdown table of ShapesEval runs: one row per arm, its seeds' test-set results side by side.

    python scripts/shapeseval_table.py docs/experiments/shapeseval_pool

Reads ``<ARM>_seed<S>.json`` (``shapeseval.json`` of each run, as docs/experiments/shapeseval_pool.sh
writes them) and prints, per arm: the seeds, the mean over seeds of the test accuracy difference (mean of
categories) with a t-interval over seeds, each seed's difference and its own paired 95 % CI, the accuracy
per category and the mean judge and quality differences.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

PATTERN = re.compile(r"^(?P<arm>.+)_seed(?P<seed>\d+)\.json$")


def _difference(block: dict) -> dict:
    return block["difference"]


def table(folder: Path) -> str:
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(folder.glob("*_seed*.json")):
        match = PATTERN.match(path.name)
        if match:
            runs[match["arm"]][int(match["seed"])] = json.loads(path.read_text())
    if not runs:
        raise SystemExit(f"no <arm>_seed<S>.json files in {folder}")
    header = ("| arm | seeds | Δ accuracy, mean of seeds [95 % t-CI] | per seed [paired 95 % CI] | Δ accuracy by "
              "category (mean of seeds) | Δ judge | Δ quality |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for arm, by_seed in runs.items():
        results = [by_seed[s] for s in sorted(by_seed)]
        deltas = np.array([_difference(r["overall"]["accuracy"])["mean"] for r in results])
        if len(deltas) > 1:
            low, high = stats.t.interval(0.95, len(deltas) - 1, loc=deltas.mean(), scale=stats.sem(deltas))
            interval = f"{deltas.mean():+.3f} [{low:+.3f}, {high:+.3f}]"
        else:
            interval = f"{deltas.mean():+.3f}"
        per_seed = ", ".join(
            f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
            for d in (_difference(r["overall"]["accuracy"]) for r in results)
        )
        categories = ", ".join(
            f"{name} {np.mean([_difference(r['per_category'][name]['accuracy'])['mean'] for r in results]):+.3f}"
            for name in results[0]["per_category"]
        )
        judge = np.mean([_difference(r["overall"]["shapes_judge"])["mean"] for r in results])
        quality = np.mean([_difference(r["overall"]["shapes_quality"])["mean"] for r in results])
        lines.append(f"| {arm} | {', '.join(map(str, sorted(by_seed)))} | {interval} | {per_seed} | {categories} "
                     f"| {judge:+.3f} | {quality:+.3f} |")
    base = results[0]["overall"]["accuracy"]["base"]["mean"]
    lines.append("")
    lines.append(f"Base model: test accuracy {base:.3f} (mean of categories), the same noise for every run.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    print(table(parser.parse_args(argv).folder))


if __name__ == "__main__":
    main()
