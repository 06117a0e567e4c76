"""Kedro project settings (defaults except where noted)."""

from kedro.config import OmegaConfigLoader

from dpok.config import CONFIG_LOADER_ARGS  # noqa: F401  (read by Kedro; its one home is dpok.config)
from dpok.hooks import MainProcessWritesHook, RunSummaryHook, TrackingStoreCheckHook
from dpok.rl.distributed import is_main_process

# Prints where the outputs are and what changed when a run that fine-tuned ends; in a multi-process
# launch (`accelerate launch ... -m kedro run`) keeps the outputs of ranks other than 0 in memory.
HOOKS = (TrackingStoreCheckHook(), RunSummaryHook(), MainProcessWritesHook())
# Only rank 0 tracks to MLflow.
DISABLE_HOOKS_FOR_PLUGINS = () if is_main_process() else ("kedro_mlflow",)

CONFIG_LOADER_CLASS = OmegaConfigLoader
