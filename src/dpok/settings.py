"""Kedro project settings (defaults except where noted)."""

from kedro.config import OmegaConfigLoader

from dpok.hooks import MainProcessWritesHook, RunSummaryHook, TrackingStoreCheckHook
from dpok.rl.distributed import is_main_process

# Prints where the outputs are and what changed when a run that fine-tuned ends; in a multi-process
# launch (`accelerate launch ... -m kedro run`) keeps the outputs of ranks other than 0 in memory.
HOOKS = (TrackingStoreCheckHook(), RunSummaryHook(), MainProcessWritesHook())
# Only rank 0 tracks to MLflow.
DISABLE_HOOKS_FOR_PLUGINS = () if is_main_process() else ("kedro_mlflow",)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # kedro-mlflow reads mlflow.yml through the loader; it ships in conf/base so a fresh clone tracks
    # to the local sqlite store without a `kedro mlflow init` step.
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
    # An environment's parameter files hold only what differs from base: nested keys merge one by one
    # (a mapping such as `finetune.reward` merges too: a weight of 0 turns a base reward off).
    "merge_strategy": {"parameters": "soft"},
}
