"""Thin nodes over :mod:`dpok.rl`, :mod:`dpok.rewards` and :mod:`dpok.models`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import mlflow
import pandas as pd
from diffusers import StableDiffusionPipeline
from PIL import Image

from dpok.config import Settings, check_keys, from_mapping, to_plain
from dpok.devices import check_device_name, resolve_device
from dpok.evaluation.history import learning_curves, probe_curves, training_reward_curves
from dpok.evaluation.probe import BenchmarkProbe, ProbeConfig, probe_table
from dpok.models import check_prompt_words
from dpok.prompts.shapeseval import benchmark_prompts, check_split_table
from dpok.provenance import (
    changed_code_since,
    identity_fingerprint,
    run_identity,
    source_digests,
    write_identity,
)
from dpok.rewards import get_reward_fn, weighted_reward
from dpok.rl import FinetuneConfig, SFTConfig, train_dpok, train_sft
from dpok.rl.distributed import Ranks, check_launch, launched_world_size, start_ranks

logger = logging.getLogger(__name__)

METHODS = ("dpok", "sft")
# finetune_value_by_step: the value baseline's Var(r − V)/Var(r) per denoising step (0 = noisiest)
VALUE_BY_STEP_COLUMNS = ("step", "value_variance_ratio")


@dataclass(frozen=True)
class FinetuneRunConfig(Settings):
    """All of ``finetune`` (``parameters_finetune.yml``, with the shared ``sampler``), typed: built once by
    the validation node and passed on as this object.

    Attributes:
        reward: Reward names from the registry (``dpok.rewards.available_rewards()``) and their weights;
            the reward is their weighted sum.
        reward_kwargs: Per-reward keyword arguments (for example weight paths), by reward name.
        train_split: Which split of the prompt table is trained on.
        checkpoint_dir: Root of the checkpoints. Each run writes into ``<checkpoint_dir>/run-<fingerprint>``
            where the fingerprint hashes everything that shapes the result (RL settings, reward, prompts,
            model, and the source code the run executes: :mod:`dpok.provenance`), so a rerun with the same
            settings and code resumes, and a changed setting or a code change starts afresh (and says why).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``.
        method: ``dpok`` (online RL, :func:`dpok.rl.train_dpok`) or ``sft`` (reward-weighted supervised
            fine-tuning on the pretrained model's samples, :func:`dpok.rl.train_sft`, the paper's baseline).
        sft: :class:`dpok.rl.SFTConfig` (``method: sft`` only).
        rl: :class:`dpok.rl.FinetuneConfig` (SFT uses the seed, sample budget, sampler, LoRA and optimiser
            settings).
        probe: :class:`dpok.evaluation.probe.ProbeConfig`: ShapesEval's test accuracy measured during
            training (DPOK only; it does not change what is trained, so it is not part of the run's identity).
    """

    KEY_PATH: ClassVar[str] = "finetune"

    reward: dict[str, float]
    reward_kwargs: dict[str, dict[str, Any]]
    train_split: str
    checkpoint_dir: str
    device: str
    method: str
    sft: SFTConfig
    rl: FinetuneConfig
    probe: ProbeConfig

    def __post_init__(self) -> None:
        self.choice("method", METHODS)
        if not isinstance(self.reward, Mapping) or not self.reward:
            self.fail("reward", "a mapping of reward names to weights, e.g. {shapes_judge: 1.0}")
        if not isinstance(self.reward_kwargs, Mapping):
            self.fail("reward_kwargs", "a mapping of reward names to keyword arguments")
        if not isinstance(self.train_split, str) or not self.train_split:
            self.fail("train_split", "a split name of the prompt table")
        if not isinstance(self.checkpoint_dir, str) or not self.checkpoint_dir:
            self.fail("checkpoint_dir", "a folder path")
        self.reward_fn()  # unknown names and stray reward_kwargs fail here, naming what is available
        check_device_name(self.key("device"), self.device)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None, sampler: Mapping[str, Any]) -> FinetuneRunConfig:
        """Build from the ``finetune`` and ``sampler`` parameters; unknown, missing and bad keys are errors
        naming their full path."""
        params = check_keys(params, {f.name for f in fields(cls)}, cls.KEY_PATH)
        return from_mapping(cls, params, cls.KEY_PATH, rl=FinetuneConfig.from_params(params.get("rl"), sampler),
                            probe=ProbeConfig.from_dict(params.get("probe")))

    def reward_fn(self):
        """The weighted reward; building it is cheap (weights load on the first call)."""
        return weighted_reward(dict(self.reward), **{k: dict(v) for k, v in self.reward_kwargs.items()})


_BENCHMARK_SOURCE = "data/01_raw/prompts/shapeseval.csv (catalog entry shapeseval_prompts)"


def validate_finetune_params(
    params: dict[str, Any], sampler: dict[str, Any], prompts: pd.DataFrame, benchmark: pd.DataFrame
) -> tuple[FinetuneRunConfig, pd.DataFrame, pd.DataFrame]:
    """Check every parameter and the training prompts before any model is loaded: the typed configuration,
    the training prompts (``prompt``, ``category``) every later node takes, and the benchmark's test prompts
    the probe scores (empty when ``finetune.probe.every_rounds`` is 0)."""
    config = FinetuneRunConfig.from_params(params, sampler)
    probe_prompts = pd.DataFrame(columns=["prompt", "category"])
    if config.probe.enabled and config.method == "dpok":
        get_reward_fn(config.probe.score)  # an unknown name fails here, with the list of known ones
        probe_prompts = benchmark_prompts(check_split_table(benchmark, _BENCHMARK_SOURCE))[["prompt", "category"]]
    check_launch()
    if config.method == "sft" and launched_world_size() > 1:
        raise ValueError(
            f"finetune.method: sft runs in one process, but {launched_world_size()} were launched; run it with "
            "plain `kedro run` (it takes minutes)"
        )
    train = prompts[prompts["split"] == config.train_split]
    if train.empty:
        raise ValueError(
            f"no prompt has split '{config.train_split}' (finetune.train_split); splits present: "
            f"{sorted(prompts['split'].unique())}"
        )
    rl = config.rl
    if config.method == "sft":
        sft = config.sft
        logger.info(
            "SFT: %d training prompts, %d samples of the pretrained model, %d steps of %d, γ=%g, reward %s",
            len(train), rl.runtime.num_rounds * rl.rollout.g_batch, sft.steps, sft.batch_size, sft.kl_weight,
            config.reward,
        )
    else:
        logger.info(
            "DPOK: %d training prompts, %d rounds × %d trajectories, reward %s, KL %s β=%g, clip %s ε=%g",
            len(train), rl.runtime.num_rounds, rl.rollout.g_batch, config.reward, rl.kl.form, rl.kl.weight,
            rl.policy.clip_mode, rl.policy.clip_range,
        )
    if not probe_prompts.empty:
        leaked = sorted(set(train["prompt"]) & set(probe_prompts["prompt"]))
        if leaked:
            raise ValueError(
                f"{len(leaked)} training prompt(s) are ShapesEval test prompts ({', '.join(map(repr, leaked[:5]))}), "
                f"which the probe (finetune.probe) scores as never trained on; remove them from the prompt file "
                f"(prompts.path) or set finetune.probe.every_rounds: 0"
            )
    categories = train["category"] if "category" in train.columns else None
    return config, pd.DataFrame({"prompt": train["prompt"].tolist(),
                                 "category": None if categories is None else categories.tolist()}), probe_prompts


def _log_round_to_mlflow(round_number: int, metrics: dict[str, float]) -> None:
    if mlflow.active_run() is not None:
        finite = {f"finetune/{k}": float(v) for k, v in metrics.items() if k != "round" and math.isfinite(v)}
        mlflow.log_metrics(finite, step=round_number)


def run_settings(config: FinetuneRunConfig, prompts: list[str], model: str) -> dict[str, Any]:
    """Everything besides code that shapes a run's result (not its length or checkpoint knobs: ``runtime``)."""
    settings = {"rl": config.rl.resumable_dict(), "reward": to_plain(config.reward),
                "reward_kwargs": to_plain(config.reward_kwargs), "prompts": prompts, "model": model}
    if config.method != "dpok":
        settings |= {"method": config.method, "sft": config.sft.to_dict()}
    return settings


def run_fingerprint(
    config: FinetuneRunConfig, prompts: list[str], model: str, code: dict[str, str] | None = None
) -> str:
    """12 hex digits identifying a run: its settings and the source code it runs (dpok.provenance)."""
    code = source_digests() if code is None else code
    return identity_fingerprint(run_identity(run_settings(config, prompts, model), code))


def _checkpoint_folder(config: FinetuneRunConfig, prompts: list[str], model: str, ranks: Ranks) -> Path:
    """``<checkpoint_dir>/run-<fingerprint>``, with the identity written into it (by the main rank); logs
    why a run that could have resumed starts afresh (the code changed)."""
    identity = run_identity(run_settings(config, prompts, model), source_digests())
    root = Path(config.checkpoint_dir)
    folder = root / f"run-{identity_fingerprint(identity)}"
    if not ranks.is_main:
        ranks.barrier()
        return folder
    if not any(folder.glob("round_*")) and (earlier := changed_code_since(root, identity)) is not None:
        other, files = earlier
        shown = ", ".join(files[:6]) + (f" and {len(files) - 6} more" if len(files) > 6 else "")
        logger.warning(
            "The code changed since the run with these settings in %s (%s): training afresh in %s instead "
            "of resuming it", other, shown, folder,
        )
    write_identity(folder, identity)
    ranks.barrier()
    return folder


def finetune(pipeline: StableDiffusionPipeline, config: FinetuneRunConfig, train_prompts: pd.DataFrame,
             probe_prompts: pd.DataFrame):
    """Run DPOK; returns the adapted UNet (saved as LoRA by the catalog), the history table (a row per
    round), the training rewards (a row per sampled trajectory: round, prompt, category, reward), the
    value baseline's variance ratio per step and the probe's table (a row per probe: round, reward calls,
    accuracy overall and per category, mean score)."""
    prompts = train_prompts["prompt"].tolist()
    # A closed-vocabulary tokenizer (the shapes world's) refuses unknown words; CLIP's accepts all.
    check_prompt_words(pipeline.tokenizer, prompts)
    ranks, rank_device = start_ranks(config.device)
    pipeline.to(rank_device or resolve_device(config.device))
    model = str(pipeline.config.get("_name_or_path", ""))
    if config.method == "sft":
        return _finetune_sft(pipeline, config, train_prompts)
    checkpoint_dir = _checkpoint_folder(config, prompts, model, ranks)
    logger.info("Checkpoints: %s", checkpoint_dir)
    probe = None
    if not probe_prompts.empty:
        probe = BenchmarkProbe(probe_prompts, config.probe, config.rl.sampler, get_reward_fn(config.probe.score))
        logger.info("Probe: %d ShapesEval test prompts × %d seeds every %d rounds", len(probe_prompts),
                    config.probe.images_per_prompt, config.probe.every_rounds)
    result = train_dpok(
        pipeline,
        prompts,
        config.reward_fn(),
        config.rl,
        checkpoint_dir,
        on_round=_log_round_to_mlflow,
        ranks=ranks,
        probe=probe,
    )
    probes = probe_table(result.probe_log, config.rl.rollout.g_batch)
    for row in probes.to_dict("records"):
        _log_round_to_mlflow(int(row["round"]), {f"probe_{k}": v for k, v in row.items() if k != "round"})
    if result.skipped_steps:
        logger.warning("%d policy step(s) were skipped for a non-finite loss", result.skipped_steps)
    value_by_step = pd.DataFrame(
        list(result.value_variance_by_step.items()), columns=list(VALUE_BY_STEP_COLUMNS)
    )
    return (pipeline.unet, pd.DataFrame(result.history), _reward_table(result.reward_log, train_prompts), value_by_step,
            probes)


def _finetune_sft(pipeline, config: FinetuneRunConfig, train_prompts: pd.DataFrame):
    """``method: sft``: the same outputs as DPOK's (the LoRA, a history, the sampled rewards); the history
    has a row per SFT step, the rewards are those of the pretrained model's samples it learned from."""
    result = train_sft(pipeline, train_prompts["prompt"].tolist(), config.reward_fn(), config.rl, config.sft)
    for row in result.history:
        _log_round_to_mlflow(int(row["round"]), {f"sft_{k}": v for k, v in row.items()})
    return (pipeline.unet, pd.DataFrame(result.history), _reward_table(result.reward_log, train_prompts),
            pd.DataFrame(columns=list(VALUE_BY_STEP_COLUMNS)), probe_table([], config.rl.rollout.g_batch))


def _reward_table(reward_log: list[list[Any]], train_prompts: pd.DataFrame) -> pd.DataFrame:
    category = dict(zip(train_prompts["prompt"], train_prompts["category"]))
    rewards = pd.DataFrame(reward_log, columns=["round", "prompt", "reward"])
    rewards.insert(2, "category", rewards["prompt"].map(category))
    return rewards


def plot_learning_curves(history: pd.DataFrame, value_by_step: pd.DataFrame) -> Image.Image:
    """Reward, the KL bound and the losses per round (the numbers DPOK trades off) and the value baseline's
    variance ratio per step; for SFT, its losses and KL bound per step."""
    if "reward_mean" not in history.columns and "weighted_mse" in history.columns:
        return learning_curves(history, title="Reward-weighted SFT", xlabel="SFT step")
    return learning_curves(history, value_by_step=value_by_step)


def plot_training_rewards(rewards: pd.DataFrame, config: FinetuneRunConfig) -> Image.Image:
    """Training reward against trajectories sampled, smoothed, overall and per category."""
    return training_reward_curves(rewards, trajectories_per_round=config.rl.rollout.g_batch)


def plot_probe_curve(probes: pd.DataFrame, rewards: pd.DataFrame, config: FinetuneRunConfig) -> Image.Image:
    """ShapesEval test accuracy (overall and per category) against reward calls, the training reward beside it."""
    return probe_curves(probes, rewards, trajectories_per_round=config.rl.rollout.g_batch,
                        images_per_prompt=config.probe.images_per_prompt)
