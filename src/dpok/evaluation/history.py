"""Learning curves from the finetune history table (one row per round)."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from dpok.evaluation.figures import curves_figure

# Columns of finetune_history drawn as learning curves, when present and not all NaN.
CURVE_COLUMNS = {
    "reward_mean": "reward (mean over the round)",
    "kl_bound_nats": "KL bound (nats)",
    "policy_loss": "policy loss",
    "value_loss": "value loss",
}


def learning_curves(history: pd.DataFrame, title: str = "DPOK fine-tuning") -> Image.Image:
    """Reward, KL bound and losses per round, one panel each (columns absent or all-NaN are skipped)."""
    if "round" not in history.columns:
        raise ValueError(f"the finetune history has no 'round' column (columns: {list(history.columns)})")
    rounds = history["round"].tolist()
    series = {
        label: (rounds, history[column].tolist())
        for column, label in CURVE_COLUMNS.items()
        if column in history.columns and history[column].notna().any()
    }
    if not series:
        raise ValueError(f"the finetune history has none of the curve columns {list(CURVE_COLUMNS)}")
    return curves_figure(series, title=title, xlabel="round")
