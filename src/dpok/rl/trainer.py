"""The DPOK training loop (docs/algorithm.md §4): rounds of sample → reward → buffer → value steps → policy steps.

One round, :func:`_train_round`, reads as the algorithm: draw prompts and sample their trajectories with
the current policy; score them; standardise the rewards and push the trained steps' transitions into the
buffer, each with the baseline V_φ predicts for it; fit V_φ; take the policy steps. Everything a round
changes lives in one :class:`~dpok.rl.state.RunState`, which is what a checkpoint captures and restores;
what it only reads (pipeline, prompts, reward, settings, ranks, step weights) is one
:class:`~dpok.rl.context.RoundContext`, built once per run.

The phases live in their own modules: :mod:`~dpok.rl.rollout` (random streams, prompts, trajectories,
rewards, precision), :mod:`~dpok.rl.baseline` (standardised rewards, V_φ's baselines and steps),
:mod:`~dpok.rl.update` (the policy steps, the KL report), :mod:`~dpok.rl.state` (the run state) and
:mod:`~dpok.rl.context` (the checks and the context).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from dpok.models.lora import lora_state_dict
from dpok.rewards.registry import reward_term_metrics
from dpok.rl.baseline import final_value_variance, push_transitions, standardised_advantages, value_steps
from dpok.rl.checkpoint import (
    capture_rng_state,
    clean_partial_checkpoints,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from dpok.rl.config import FinetuneConfig
from dpok.rl.context import RewardFn, RoundContext, check_inputs, prepare_pipeline
from dpok.rl.distributed import Ranks
from dpok.rl.nft import nft_update
from dpok.rl.rollout import rollout, score_shared
from dpok.rl.state import RunState, check_resumable
from dpok.rl.update import kl_report, mean_or_nan, policy_steps, step_weights

logger = logging.getLogger(__name__)

METRIC_NAMES = (
    "round",
    "reward_mean",
    "reward_std",
    "reward_min",
    "reward_max",
    "kl_bound_nats",
    "kl_penalty",
    "policy_loss",
    "value_loss",
    "ratio_dev",
    "clip_fraction",
    "grad_norm",
    "skipped_steps",
    "value_variance_ratio",
    "baseline_variance_ratio",
    "uniform_groups",
    "seconds_sampling",
    "seconds_reward",
    "seconds_kl_report",
    "seconds_buffer",
    "seconds_value",
    "seconds_policy",
)
"""Keys of each round's metrics. ``kl_bound_nats``: exact KL bound (nats, summed over steps and latent
elements) averaged over this round's first ``runtime.kl_report_trajectories`` fresh trajectories;
``kl_penalty``: the optimised KL term (``kl.form``, before β) averaged over micro-batches;
``policy_loss``: the clipped surrogate without the KL term; ``grad_norm``: LoRA gradient norm before
clipping; ``skipped_steps``: policy steps dropped for a non-finite loss or gradient;
``value_variance_ratio``: Var(r − V)/Var(r) of this round's fresh transitions before V_φ is fitted on them
(V the baseline the policy uses: λ_t·V_φ with ``value.shrinkage``), per step and averaged over steps (below 1: the baseline removes variance; NaN without a value function);
``baseline_variance_ratio``: the same for the whole baseline on the raw reward, Var(r − (m + s·V))/Var(r),
where m and s standardise the reward (``advantage.normalisation``): what the group or prompt mean and V_φ
remove together;
``uniform_groups``: groups (``reward_normalisation: group``) left out because all their rewards were equal.
A weighted mixture of two or more rewards (:class:`dpok.rewards.WeightedReward`) adds ``reward_mean/<name>``
and ``reward_std/<name>`` per term, unweighted (:func:`dpok.rewards.reward_term_metrics`)."""


@dataclass
class TrainingResult:
    """What :func:`train_dpok` returns.

    Attributes:
        history: One metrics dict (keys :data:`METRIC_NAMES`) per round, including resumed rounds.
        lora_state: Final LoRA weights on the CPU (peft names; ``dpok.models.save_lora`` writes the
            diffusers file from the UNet, which still carries the adapter).
        config: The configuration of the run.
        checkpoint_dir: Where checkpoints were written.
        last_checkpoint: The checkpoint of the final round.
        resumed_from: The checkpoint the run continued from, or None for a fresh run.
        reward_log: ``[round, prompt, reward]`` of every trajectory sampled, resumed rounds included.
        value_variance_by_step: ``{step index: Var(r − V)/Var(r)}`` (0 = the noisiest step) over the final
            buffer's transitions (the last rounds'), V the baseline each got when it entered the buffer,
            before V_φ was fitted on it; empty without a value function.
        probe_log: One row per benchmark probe (``round``, then the probe's metrics), resumed rounds included;
            empty without a probe.
    """

    history: list[dict[str, float]]
    lora_state: dict[str, torch.Tensor]
    config: FinetuneConfig
    checkpoint_dir: Path
    last_checkpoint: Path | None
    resumed_from: Path | None
    reward_log: list[list[Any]]
    value_variance_by_step: dict[int, float] = field(default_factory=dict)
    probe_log: list[dict[str, float]] = field(default_factory=list)

    @property
    def skipped_steps(self) -> int:
        return int(sum(row["skipped_steps"] for row in self.history))


class _Stopwatch:
    """Seconds spent per phase of a round."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - tick


def _train_round(context: RoundContext, run: RunState, round_number: int) -> dict[str, float]:
    """One round (docs/algorithm.md §4); returns its metrics (keys :data:`METRIC_NAMES`). With several
    ranks each does its share of the work and all end the round in the same state (dpok.rl.distributed)."""
    clock = _Stopwatch()
    with clock("sampling"):  # 1. prompts and trajectories from the current policy, no grad
        round_prompts, groups, trajectory = rollout(context, round_number)
    # 2. a reward per trajectory (and a mixture's terms, unweighted, filled in after the block)
    with clock("reward"), reward_term_metrics(context.reward_fn, context.ranks.gather) as reward_terms:
        rewards = score_shared(context, trajectory.images, round_prompts, round_number)
    run.reward_log.extend([round_number, prompt, float(r)] for prompt, r in zip(round_prompts, rewards))
    with clock("kl_report"):
        kl_bound = kl_report(context, trajectory)
    if context.config.policy.objective == "nft":  # 3–5 on the round's images, no buffer, no V_φ (dpok.rl.nft)
        with clock("buffer"):
            advantage, keep, baseline_metrics = standardised_advantages(context, run, trajectory, rewards, groups)
        with clock("value"):
            value_losses = []
        with clock("policy"):
            policy = nft_update(context, run, round_number, trajectory, advantage, keep)
            del trajectory
    else:
        with clock("buffer"):  # 3. standardised rewards and the trained steps' transitions, with baselines
            baseline_metrics = push_transitions(context, run, round_number, trajectory, rewards, groups)
            del trajectory
        with clock("value"):  # 4. value steps
            value_losses = value_steps(context, run, round_number)
        with clock("policy"):  # 5. policy steps
            policy = policy_steps(context, run, round_number)
    return {
        "round": round_number,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "reward_min": float(rewards.min()),
        "reward_max": float(rewards.max()),
        **reward_terms,
        "kl_bound_nats": kl_bound,
        "kl_penalty": policy["kl_penalty"],
        "policy_loss": policy["policy_loss"],
        "value_loss": mean_or_nan(value_losses),
        "ratio_dev": policy["ratio_dev"],
        "clip_fraction": policy["clip_fraction"],
        "grad_norm": policy["grad_norm"],
        "skipped_steps": policy["skipped_steps"],
        **baseline_metrics,
        "seconds_sampling": clock.seconds["sampling"],
        "seconds_reward": clock.seconds["reward"],
        "seconds_kl_report": clock.seconds["kl_report"],
        "seconds_buffer": clock.seconds["buffer"],
        "seconds_value": clock.seconds["value"],
        "seconds_policy": clock.seconds["policy"],
    }


class Probe(Protocol):
    """Scores the policy on a benchmark during training (:class:`dpok.evaluation.probe.BenchmarkProbe`)."""

    every_rounds: int

    def __call__(self, pipeline) -> dict[str, float]: ...


def _run_probe(probe: Probe, pipeline, run: RunState, round_number: int, num_rounds: int) -> None:
    """Probe after ``round_number`` (0: before training) when it is due and not yet recorded (a resumed run
    has its earlier rows). The global random state is restored afterwards, so the probe cannot change what
    the run trains, whatever the sampler it calls draws."""
    due = round_number % probe.every_rounds == 0 or round_number == num_rounds
    if not due or any(row["round"] == round_number for row in run.probe_log):
        return
    saved = capture_rng_state()
    try:
        with torch.no_grad():
            metrics = probe(pipeline)
    finally:
        restore_rng_state(saved)
    run.probe_log.append({"round": round_number, **metrics})
    logger.info("probe after round %d: accuracy %.3f, mean score %.4f (%.1f s)", round_number,
                metrics.get("accuracy", float("nan")), metrics.get("score_mean", float("nan")),
                metrics.get("seconds", float("nan")))


def train_dpok(
    pipeline,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    config: FinetuneConfig,
    checkpoint_dir: str | Path,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    ranks: Ranks | None = None,
    probe: Probe | None = None,
) -> TrainingResult:
    """Fine-tune ``pipeline.unet`` with a LoRA adapter by DPOK; returns the history and final LoRA.

    ``pipeline`` is a diffusers ``StableDiffusionPipeline`` with a DDIM scheduler (modified in place: the
    UNet gets the adapter). ``reward_fn(images_uint8_NHWC, prompts) -> rewards`` scores a batch.
    Checkpoints go to ``checkpoint_dir`` (see :mod:`dpok.rl.checkpoint`); with ``config.runtime.resume`` the
    run continues from the latest one there. ``on_round(round, metrics)`` is called after each round
    (and its checkpoint, if any).

    ``ranks`` (:func:`dpok.rl.distributed.start_ranks`): the processes of a multi-process launch, each
    calling this with its own pipeline on its own device; they share every round's work, end each round
    in the same state, and only the main rank writes checkpoints, reports progress and calls ``on_round``.

    ``probe`` (optional, ``probe.every_rounds > 0``): called with the pipeline on the main rank before the
    first round, after every ``every_rounds`` rounds and after the last, before that round's checkpoint;
    its rows are kept in the checkpoints and returned as :attr:`TrainingResult.probe_log`.
    """
    probing = probe is not None and probe.every_rounds > 0
    prompts = check_inputs(pipeline, prompts, config)
    ranks = ranks or Ranks()
    checkpoint_dir = Path(checkpoint_dir)
    unet, scheduler = pipeline.unet, pipeline.scheduler
    # Read and check an existing run before touching the pipeline, so a refused resume changes nothing.
    if ranks.is_main:
        clean_partial_checkpoints(checkpoint_dir)
    ranks.barrier()
    previous_run = list_checkpoints(checkpoint_dir)
    saved = None
    if config.runtime.resume and previous_run:
        saved = load_checkpoint(previous_run[-1])
        check_resumable(saved.config, config, previous_run[-1])

    prepare_pipeline(pipeline, config)
    run = RunState.create(unet, config)
    if config.runtime.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    resumed_from = last_checkpoint = None
    if saved is not None:
        run.restore(saved, unet)
        resumed_from = last_checkpoint = previous_run[-1]
        previous_run = []  # continued, not replaced
        logger.info("Resuming DPOK from %s (round %d of %d)", resumed_from, run.round, config.runtime.num_rounds)
    elif previous_run and ranks.is_main:
        logger.info(
            "finetune.rl.runtime.resume is false: %d old checkpoint(s) in %s will be deleted once this run's first "
            "checkpoint is written", len(previous_run), checkpoint_dir,
        )
    context = RoundContext(pipeline=pipeline, prompts=prompts, reward_fn=reward_fn, config=config, ranks=ranks,
                           step_weights=step_weights(scheduler, config))

    bar = tqdm(total=config.runtime.num_rounds, initial=run.round, disable=not progress or not ranks.is_main,
               desc="DPOK rounds")
    try:
        if probing and ranks.is_main and run.round == 0:
            _run_probe(probe, pipeline, run, 0, config.runtime.num_rounds)
        for round_number in range(run.round + 1, config.runtime.num_rounds + 1):
            metrics = _train_round(context, run, round_number)
            run.history.append(metrics)
            if probing and ranks.is_main:
                _run_probe(probe, pipeline, run, round_number, config.runtime.num_rounds)
            if round_number % config.runtime.checkpoint_every == 0 or round_number == config.runtime.num_rounds:
                if ranks.is_main:
                    last_checkpoint = save_checkpoint(checkpoint_dir, run.capture(unet, config))
                    if previous_run:  # a fresh run replaces the old one only now that it has a checkpoint
                        remove_checkpoints(p for p in previous_run if p != last_checkpoint)
                        previous_run = []
                    prune_checkpoints(checkpoint_dir, config.runtime.keep_last_checkpoints)
                ranks.barrier()  # the others wait: the round's checkpoint exists before anyone goes on
                if not ranks.is_main:
                    last_checkpoint = list_checkpoints(checkpoint_dir)[-1]
            if not ranks.is_main:
                continue
            if on_round is not None:
                on_round(round_number, metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", kl=f"{metrics['kl_bound_nats']:.3g}")
            logger.info(
                "round %d/%d: reward %.4f ± %.4f, KL bound %.4g nats, ratio dev %.3g, V ratio %.3g, skipped %d",
                round_number, config.runtime.num_rounds, metrics["reward_mean"], metrics["reward_std"],
                metrics["kl_bound_nats"], metrics["ratio_dev"], metrics["value_variance_ratio"],
                metrics["skipped_steps"],
            )
    finally:
        bar.close()

    return TrainingResult(
        history=run.history,
        lora_state={k: v.cpu() for k, v in lora_state_dict(unet).items()},
        config=config,
        checkpoint_dir=checkpoint_dir,
        last_checkpoint=last_checkpoint,
        resumed_from=resumed_from,
        reward_log=run.reward_log,
        value_variance_by_step=final_value_variance(run),
        probe_log=[dict(row) for row in run.probe_log],
    )


__all__ = ["METRIC_NAMES", "Probe", "TrainingResult", "train_dpok"]
