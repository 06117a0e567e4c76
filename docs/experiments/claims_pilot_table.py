"""The claims pilot's table (docs/experiments/claims_pilot.sh): one row per run.

    python docs/experiments/claims_pilot_table.py [docs/experiments/claims_pilot]
    python docs/experiments/claims_pilot_table.py --curves [FOLDER]   # training reward per 20 rounds

Reads each ``<arm>_<category>_r<rounds>_s<seed>.metrics.json`` (the evaluate pipeline's metrics: 16 seeds of
the one prompt, base and fine-tuned from the same noise) and its ``.history.csv``, and prints the judge and
quality differences with their paired 95 % CIs, the KL bound at the end (mean of the last five rounds'
reports) and the training reward of the first and last 20 rounds.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

NAME = re.compile(r"^(?P<arm>.+)_(?P<category>[a-z]+)_r(?P<rounds>\d+)_s(?P<seed>\d+)\.metrics\.json$")


def _diff(block: dict) -> str:
    d = block["difference"]
    return f"{block['base']['mean']:.3f} → {block['finetuned']['mean']:.3f}, {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def table(folder: Path) -> str:
    lines = ["| arm | prompt's category | rounds (reward calls) | seed | judge base → tuned, Δ [95 % CI] | quality base → tuned, Δ [95 % CI] "
             "| KL bound, last 5 rounds (nats) | training reward, first → last 20 rounds |",
             "|---|---|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.metrics.json")):
        match = NAME.match(path.name)
        if not match:
            continue
        metrics = json.loads(path.read_text())["all"]
        history_path = path.with_name(path.name.replace(".metrics.json", ".history.csv"))
        kl = reward = "—"
        if history_path.exists():
            history = pd.read_csv(history_path)
            if "reward_mean" in history:
                kl = f"{history['kl_bound_nats'].dropna().tail(5).mean():.0f}"
                reward = f"{history['reward_mean'].head(20).mean():.3f} → {history['reward_mean'].tail(20).mean():.3f}"
            elif "kl_bound_nats" in history:  # SFT: reports every few steps
                kl = f"{history['kl_bound_nats'].dropna().tail(5).mean():.0f}"
        rounds = int(match["rounds"])
        calls = f" ({rounds * 16:,})"  # conf/shapes_single: 16 a round; SFT samples the same number from the base model
        lines.append(f"| {match['arm']} | {match['category']} | {rounds}{calls} | {match['seed']} | "
                     f"{_diff(metrics['shapes_judge'])} | {_diff(metrics['shapes_quality'])} | {kl} | {reward} |")
    return "\n".join(lines)


def curves(folder: Path, window: int = 20) -> str:
    """Each RL run's training reward, mean over consecutive windows of rounds, and its KL bound at each
    window's end: where the gains start, i.e. what budget the matrix needs."""
    rows = {}
    for path in sorted(folder.glob("*.history.csv")):
        history = pd.read_csv(path)
        if "reward_mean" not in history:
            continue
        windows = history.groupby((history["round"] - 1) // window)
        rows[path.name.removesuffix(".history.csv")] = [
            f"{part['reward_mean'].mean():.2f} ({part['kl_bound_nats'].dropna().iloc[-1]:.0f})" for _, part in windows]
    width = max(len(r) for r in rows.values())
    header = [f"rounds {k * window + 1}–{(k + 1) * window}" for k in range(width)]
    lines = ["| run | " + " | ".join(header) + " |", "|---|" + "---|" * width]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--curves"]
    folder = Path(arguments[0] if arguments else "docs/experiments/claims_pilot")
    print(curves(folder) if "--curves" in sys.argv else table(folder))
