"""Checkpoints are written atomically, found by round, read back exactly, RNG states included."""

import random

import numpy as np
import pytest
import torch

from dpok.rl import TrainingState, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from dpok.rl.checkpoint import capture_rng_state, clean_partial_checkpoints, prune_checkpoints, restore_rng_state


def _state(round_number: int, value: float = 1.0) -> TrainingState:
    parameter = torch.nn.Parameter(torch.full((2, 3), value))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    return TrainingState(
        round=round_number,
        lora={"unet.lora_A.weight": torch.full((2, 3), value)},
        policy_optimizer=optimizer.state_dict(),
        buffer={"tensors": {"latents": torch.arange(6.0).reshape(3, 2)}, "meta": {"capacity": 8, "size": 3}},
        history=[{"round": r, "reward_mean": 0.5 * r, "value_loss": float("nan")} for r in range(1, round_number + 1)],
        config={"seed": 0},
        rng=capture_rng_state(),
    )


def test_save_load_round_trip(tmp_path):
    state = _state(3, value=2.5)
    path = save_checkpoint(tmp_path, state)
    assert path.name == "round_000003"
    loaded = load_checkpoint(path)
    assert loaded.round == 3 and loaded.config == {"seed": 0}
    torch.testing.assert_close(loaded.lora["unet.lora_A.weight"], torch.full((2, 3), 2.5))
    torch.testing.assert_close(loaded.buffer["tensors"]["latents"], state.buffer["tensors"]["latents"])
    assert loaded.buffer["meta"] == {"capacity": 8, "size": 3}
    assert loaded.history[2]["reward_mean"] == 1.5 and np.isnan(loaded.history[0]["value_loss"])
    torch.testing.assert_close(
        loaded.policy_optimizer["state"][0]["exp_avg"], state.policy_optimizer["state"][0]["exp_avg"]
    )
    assert loaded.value_function is None and loaded.reward_normaliser is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_000003"]


def test_latest_and_keep_last(tmp_path):
    for r in (2, 10, 4):
        save_checkpoint(tmp_path, _state(r))
    (tmp_path / "round_000099").mkdir()  # incomplete (no state.json): never "latest"
    assert latest_checkpoint(tmp_path).name == "round_000010"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round_000002", "round_000004", "round_000010"]
    prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round_000004", "round_000010"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _state(5, value=1.0))

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("dpok.rl.checkpoint.torch.save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, _state(5, value=9.0))  # same name: would replace round_000005
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, _state(6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_000005"]  # no temp folders, no round 6
    torch.testing.assert_close(load_checkpoint(tmp_path / "round_000005").lora["unet.lora_A.weight"], torch.ones(2, 3))

    monkeypatch.undo()
    save_checkpoint(tmp_path, _state(5, value=9.0))  # a successful replacement swaps it in
    replaced = load_checkpoint(tmp_path / "round_000005").lora["unet.lora_A.weight"]
    torch.testing.assert_close(replaced, torch.full((2, 3), 9.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_000005"]

    (tmp_path / ".tmp_round_crashed").mkdir()
    clean_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_000005"]


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    path = save_checkpoint(tmp_path, _state(1))
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(path).rng)
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]
