"""FIFO order and capacity, the prompt-embedding table, sampling determinism, state round trip."""

import numpy as np
import pytest
import torch

from dpok.rl import Trajectory, TransitionBuffer


def _trajectory(prompts: list[str], steps: int, tag: float, cfg: bool = True) -> Trajectory:
    """Latent values encode (tag, trajectory, step) so that each transition can be identified."""
    b = len(prompts)
    ids = tag * 100 + torch.arange(b).reshape(b, 1) * 10 + torch.arange(steps + 1).reshape(1, -1)
    latents = ids.float().reshape(b, steps + 1, 1, 1, 1).expand(b, steps + 1, 2, 2, 2).contiguous()
    embeds = torch.stack([torch.full((3, 4), float(sum(map(ord, p)))) for p in prompts])
    return Trajectory(
        prompts=prompts,
        latents=latents,
        timesteps=torch.arange(steps, 0, -1) * 100,
        log_probs=-ids[:, :-1].float(),
        noise_preds=torch.zeros(b, steps, 2, 2, 2),
        prompt_embeds=embeds,
        negative_prompt_embeds=-embeds if cfg else None,
        images=None,
        guidance_scale=3.0,
        eta=1.0,
    )


def _ids(batch) -> list[int]:
    return batch.latents[:, 0, 0, 0].round().long().tolist()


def test_fifo_keeps_the_newest_transitions_in_order():
    buffer = TransitionBuffer(capacity=10)
    buffer.push(_trajectory(["p", "q"], steps=3, tag=1), np.array([0.5, 0.7]))  # 6 transitions
    assert len(buffer) == 6
    buffer.push(_trajectory(["q", "r"], steps=3, tag=2), np.array([0.1, 0.2]))  # 12 > 10: oldest 2 dropped
    assert len(buffer) == 10
    batch = buffer.get(torch.arange(10))
    assert _ids(batch) == [102, 110, 111, 112, 200, 201, 202, 210, 211, 212]
    assert [round(x, 6) for x in batch.rewards.tolist()] == [0.5, 0.7, 0.7, 0.7, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2]
    assert batch.prompts == ["p", "q", "q", "q", "q", "q", "q", "r", "r", "r"]
    assert batch.step_indices.tolist() == [2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert batch.timesteps.tolist() == [100, 300, 200, 100, 300, 200, 100, 300, 200, 100]
    torch.testing.assert_close(batch.next_latents[:, 0, 0, 0], batch.latents[:, 0, 0, 0] + 1)
    torch.testing.assert_close(batch.log_probs, -batch.latents[:, 0, 0, 0])
    # one table row per distinct prompt, gathered back per transition
    assert buffer.state_dict()["tensors"]["table_prompt_embeds"].shape == (3, 3, 4)
    torch.testing.assert_close(batch.prompt_embeds[0], torch.full((3, 4), float(ord("p"))))
    torch.testing.assert_close(batch.negative_prompt_embeds[-1], torch.full((3, 4), -float(ord("r"))))

    buffer.push(_trajectory(["s"] * 5, steps=3, tag=3), np.zeros(5))  # 15 > capacity at once
    assert _ids(buffer.get(torch.arange(10))) == [312, 320, 321, 322, 330, 331, 332, 340, 341, 342]


def test_sampling_is_uniform_distinct_and_reproducible():
    buffer = TransitionBuffer(capacity=100)
    buffer.push(_trajectory([f"p{i}" for i in range(10)], steps=10, tag=0), np.arange(10.0))
    first = _ids(buffer.sample(16, torch.Generator().manual_seed(1)))
    again = _ids(buffer.sample(16, torch.Generator().manual_seed(1)))
    other = _ids(buffer.sample(16, torch.Generator().manual_seed(2)))
    assert first == again and first != other
    assert len(set(first)) == 16
    assert len(buffer.sample(500, torch.Generator().manual_seed(0))) == 100  # capped at the buffer size
    counts = np.zeros(100)
    generator = torch.Generator().manual_seed(3)
    for _ in range(400):
        for i in _ids(buffer.sample(10, generator)):
            counts[i] += 1  # ids 0..99, one per transition
    assert counts.min() > 15 and counts.max() < 70  # expectation 40 each


def test_state_dict_round_trip_preserves_order_and_sampling():
    buffer = TransitionBuffer(capacity=7)
    buffer.push(_trajectory(["p", "q"], steps=3, tag=1), np.array([1.0, 2.0]))
    buffer.push(_trajectory(["r"], steps=3, tag=2), np.array([3.0]))
    restored = TransitionBuffer(capacity=7)
    restored.load_state_dict(buffer.state_dict())
    assert len(restored) == 7
    assert _ids(restored.get(torch.arange(7))) == _ids(buffer.get(torch.arange(7)))
    draw = torch.Generator().manual_seed(0)
    assert _ids(restored.sample(5, draw)) == _ids(buffer.sample(5, torch.Generator().manual_seed(0)))
    restored.push(_trajectory(["p"], steps=3, tag=3), np.array([4.0]))
    buffer.push(_trajectory(["p"], steps=3, tag=3), np.array([4.0]))
    assert _ids(restored.get(torch.arange(7))) == _ids(buffer.get(torch.arange(7)))
    empty = TransitionBuffer(capacity=7)
    empty.load_state_dict(TransitionBuffer(capacity=7).state_dict())
    assert len(empty) == 0
    with pytest.raises(ValueError, match="capacity"):
        TransitionBuffer(capacity=8).load_state_dict(buffer.state_dict())


def test_refuses_mixing_cfg_and_bad_rewards():
    buffer = TransitionBuffer(capacity=10)
    buffer.push(_trajectory(["p"], steps=2, tag=1), np.array([1.0]))
    with pytest.raises(ValueError, match="CFG"):
        buffer.push(_trajectory(["q"], steps=2, tag=1, cfg=False), np.array([1.0]))
    with pytest.raises(ValueError, match="rewards"):
        buffer.push(_trajectory(["p", "q"], steps=2, tag=1), np.array([1.0]))
    with pytest.raises(ValueError, match="empty"):
        TransitionBuffer(3).sample(1, torch.Generator())


def test_baselines_travel_with_their_transitions_and_default_to_zero():
    buffer = TransitionBuffer(capacity=10)
    buffer.push(_trajectory(["p"], steps=3, tag=1), np.array([0.5]))
    trajectory = _trajectory(["q", "r"], steps=3, tag=2)
    baselines = -trajectory.latents[:, :-1, 0, 0, 0]  # (B, T), encodes each transition's id
    buffer.push(trajectory, np.array([0.1, 0.2]), baselines)
    batch = buffer.get(torch.arange(9))
    torch.testing.assert_close(batch.baselines[:3], torch.zeros(3))
    torch.testing.assert_close(batch.baselines[3:], -batch.latents[3:, 0, 0, 0])
    restored = TransitionBuffer(capacity=10)
    restored.load_state_dict(buffer.state_dict())
    torch.testing.assert_close(restored.get(torch.arange(9)).baselines, batch.baselines)
    with pytest.raises(ValueError, match="baselines"):
        buffer.push(trajectory, np.array([0.1, 0.2]), torch.zeros(5))
