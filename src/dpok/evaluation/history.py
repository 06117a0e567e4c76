"""Learning curves from the finetune history table (one row per round)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from dpok.evaluation.figures import curves_figure

# Columns of finetune_history drawn as learning curves, when present and not all NaN.
CURVE_COLUMNS = {
    "reward_mean": "reward (mean over the round)",
    "kl_bound_nats": "KL bound (nats)",
    "policy_loss": "policy loss",
    "value_loss": "value loss",
    "weighted_mse": "reward-weighted denoising loss (SFT)",
    "kl_mse": "supervised KL term, ε-MSE to the pretrained model (SFT)",
}


VALUE_PANEL = "Var(r − V)/Var(r), final buffer"


def learning_curves(
    history: pd.DataFrame, title: str = "DPOK fine-tuning", xlabel: str = "round",
    value_by_step: pd.DataFrame | None = None,
) -> Image.Image:
    """Reward, KL bound and losses per round, one panel each (columns absent or all-NaN are skipped), and each
    term of a reward mixture (``reward_mean/<name>`` columns); with a
    non-empty ``value_by_step`` (columns ``step``, ``value_variance_ratio``), a last panel of the value
    baseline's variance ratio per denoising step."""
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
    for column in history.columns:  # a reward mixture's terms, one panel each (dpok.rewards.reward_term_metrics)
        if column.startswith("reward_mean/") and history[column].notna().any():
            series[f"reward term {column.removeprefix('reward_mean/')} (unweighted mean)"] = (rounds, history[column].tolist())
    if value_by_step is not None and len(value_by_step):
        series[VALUE_PANEL] = (value_by_step["step"].tolist(), value_by_step["value_variance_ratio"].tolist())
    return curves_figure(series, title=title, xlabel=xlabel, xlabels={VALUE_PANEL: "denoising step (0 = noisiest)"})


def training_reward_curves(
    rewards: pd.DataFrame, trajectories_per_round: int, window: int | None = None, title: str = "Training reward"
) -> Image.Image:
    """The reward of every sampled trajectory, smoothed, against trajectories sampled: all prompts, and
    one line per category (or per prompt when there are no categories).

    ``rewards`` has one row per trajectory: ``round``, ``prompt``, ``reward`` and optionally ``category``.
    Each line is the running mean of that group's last ``window`` trajectories (default: a sixth of the
    run, at least 32), so a reader sees learning rather than round-to-round noise; the faint line is each
    round's mean.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dpok.evaluation.figures import figure_to_image

    missing = {"round", "prompt", "reward"} - set(rewards.columns)
    if missing:
        raise ValueError(f"the training rewards table lacks the columns {sorted(missing)}")
    if rewards.empty:
        raise ValueError("the training rewards table is empty: no round was trained")
    window = window or max(32, len(rewards) // 6)
    by = "category" if "category" in rewards.columns and rewards["category"].notna().all() else "prompt"
    ordered = rewards.sort_values("round", kind="stable").reset_index(drop=True)
    ordered["sampled"] = np.arange(1, len(ordered) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    per_round = ordered.groupby("round")["reward"].mean()
    axes[0].plot(per_round.index * trajectories_per_round, per_round.values, lw=0.6, alpha=0.35, color="gray",
                 label="mean of each round")
    smoothed = ordered["reward"].rolling(window, min_periods=max(1, window // 4)).mean()
    axes[0].plot(ordered["sampled"], smoothed, lw=1.8, color="black", label=f"running mean of {window}")
    axes[0].set_title("all training prompts")
    axes[0].legend(loc="lower right", fontsize=8)
    half = max(1, window // 2)
    for name, group in ordered.groupby(by, sort=True):
        running = group["reward"].rolling(half, min_periods=max(1, half // 4)).mean()
        axes[1].plot(group["sampled"], running, lw=1.4, label=str(name)[:32])
    axes[1].set_title(f"per {by} (running mean of its last {half})")
    axes[1].legend(loc="lower right", fontsize=7)
    for ax in axes:
        ax.set_xlabel("trajectories sampled")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return figure_to_image(fig)


def probe_curves(
    probes: pd.DataFrame, rewards: pd.DataFrame, trajectories_per_round: int, images_per_prompt: int
) -> Image.Image:
    """The successors' GenEval-vs-steps plot: the probe's test accuracy (overall as GenEval averages it, and per
    category) against reward calls, and beside it the training reward (each round's mean and a running mean).

    ``probes``: :func:`dpok.evaluation.probe.probe_table` (``reward_calls``, ``accuracy``,
    ``accuracy_<category>``); empty when the run had no probe, which the figure says. ``rewards``: a row per
    sampled trajectory (``round``, ``reward``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dpok.evaluation.figures import figure_to_image

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    left = axes[0]
    if probes.empty:
        left.text(0.5, 0.5, "no probe in this run\n(finetune.probe.every_rounds: 0)", ha="center", va="center")
    else:
        for column in sorted(c for c in probes.columns if c.startswith("accuracy_")):
            left.plot(probes["reward_calls"], probes[column], marker=".", lw=1.0, label=column.removeprefix("accuracy_"))
        left.plot(probes["reward_calls"], probes["accuracy"], marker="o", lw=2.2, color="black", label="overall")
        left.set_ylim(-0.02, 1.02)
        left.legend(loc="lower right", fontsize=7)
    left.set_title(f"ShapesEval test accuracy ({images_per_prompt} seed(s) per prompt)")
    left.set_xlabel("reward calls (trajectories sampled)")
    left.set_ylabel("accuracy (judge = 1)")
    right = axes[1]
    if not rewards.empty:
        per_round = rewards.groupby("round")["reward"].mean()
        calls = per_round.index.to_numpy() * trajectories_per_round
        right.plot(calls, per_round.values, lw=0.6, alpha=0.4, color="gray", label="mean of each round")
        window = max(1, len(per_round) // 8)
        right.plot(calls, per_round.rolling(window, min_periods=1).mean().values, lw=1.8, color="black",
                   label=f"running mean of {window} rounds")
        right.legend(loc="lower right", fontsize=7)
    right.set_title("training reward")
    right.set_xlabel("reward calls (trajectories sampled)")
    right.set_ylabel("reward")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_to_image(fig)


def run_summary(history: pd.DataFrame, paths: dict[str, str], next_command: str | None) -> str:
    """What a user reads when ``finetune`` ends: the reward at the start and end of training (mean and the
    within-round spread over the first and last tenth of the rounds), the last KL bound, where the
    outputs are, and the command that compares the fine-tuned model with the base model.

    ``paths`` maps a label (``LoRA``, ``curves`` ...) to a file or folder; ``next_command`` is omitted
    when the run already evaluated.
    """
    rounds = len(history)
    if rounds == 0:
        return "DPOK: no round was trained (the run resumed a finished checkpoint)."
    if "reward_mean" not in history.columns and "weighted_mse" in history.columns:  # finetune.method: sft
        lines = [f"SFT finished {rounds} step(s) on the base model's samples. Loss {history['loss'].iloc[0]:.4g} "
                 f"in step 1 → {history['loss'].iloc[-1]:.4g} in step {rounds}."]
    else:
        tenth = max(1, rounds // 10)
        first, last = history.iloc[:tenth], history.iloc[-tenth:]

        def reward(part: pd.DataFrame) -> str:
            return f"{part['reward_mean'].mean():.3f} ± {part['reward_std'].mean():.3f}"

        span = "round 1" if tenth == 1 else f"rounds 1–{tenth}"
        last_span = f"round {rounds}" if tenth == 1 else f"rounds {rounds - tenth + 1}–{rounds}"
        lines = [
            f"DPOK finished {rounds} round(s). Training reward (mean ± within-round std): "
            f"{reward(first)} in {span} → {reward(last)} in {last_span}.",
        ]
    kl = history["kl_bound_nats"].dropna() if "kl_bound_nats" in history else pd.Series(dtype=float)
    if len(kl):
        lines.append(f"KL bound to the base model in the last reported round: {kl.iloc[-1]:.1f} nats per trajectory.")
    width = max(len(label) for label in paths) if paths else 0
    lines += [f"  {label + ':':<{width + 1}} {path}" for label, path in paths.items()]
    if next_command:
        lines.append(f"Before/after on fixed seeds: {next_command}")
    return "\n".join(lines)
