"""The summary printed when a run that fine-tuned ends (dpok.evaluation.history.run_summary)."""

import numpy as np
import pandas as pd

from dpok.evaluation.history import run_summary


def _history(rounds: int) -> pd.DataFrame:
    return pd.DataFrame({
        "round": np.arange(1, rounds + 1),
        "reward_mean": np.linspace(0.5, 0.8, rounds),
        "reward_std": np.full(rounds, 0.2),
        "kl_bound_nats": np.linspace(0.0, 40.0, rounds),
    })


def test_summary_gives_start_and_end_reward_kl_paths_and_the_next_command():
    text = run_summary(_history(20), {"LoRA": "data/06_models/lora", "learning curves": "x.png"},
                       "kedro run --pipelines pretrained && kedro run --pipelines evaluate")
    # first and last tenth: rounds 1–2 and 19–20
    start, end = np.linspace(0.5, 0.8, 20)[:2].mean(), np.linspace(0.5, 0.8, 20)[-2:].mean()
    assert f"{start:.3f} ± 0.200 in rounds 1–2 → {end:.3f} ± 0.200 in rounds 19–20" in text
    assert "KL bound to the base model in the last reported round: 40.0 nats" in text
    assert "  LoRA:            data/06_models/lora" in text
    assert text.endswith("Before/after on fixed seeds: kedro run --pipelines pretrained && kedro run --pipelines evaluate")


def test_summary_of_a_short_or_empty_run():
    text = run_summary(_history(3).assign(kl_bound_nats=np.nan), {}, None)
    assert "in round 1 →" in text and "in round 3." in text and "KL bound" not in text and "Before/after" not in text
    assert "no round was trained" in run_summary(_history(0), {}, None)


def test_summary_of_an_sft_run():
    history = pd.DataFrame({"round": [1, 2, 3], "loss": [0.02, 0.015, 0.01], "weighted_mse": [0.02, 0.015, 0.01],
                            "kl_mse": [0.0, 1e-4, 2e-4], "grad_norm": [0.01] * 3, "kl_bound_nats": [np.nan, np.nan, 12.5]})
    text = run_summary(history, {"LoRA": "lora"}, None)
    assert text.startswith("SFT finished 3 step(s)") and "0.02 in step 1 → 0.01 in step 3" in text
    assert "last reported round: 12.5 nats" in text
