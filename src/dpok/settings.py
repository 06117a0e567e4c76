"""Kedro project settings (defaults except where noted)."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # kedro-mlflow reads mlflow.yml through the loader; it ships in conf/base so a fresh clone tracks
    # to the local sqlite store without a `kedro mlflow init` step.
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
}
