"""Kedro hooks of the project: the MLflow store checked before anything runs, the summary a user reads
when a run that fine-tuned ends, and, in a multi-process launch, outputs written by the main rank only."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

from dpok.evaluation.history import run_summary
from dpok.rl.distributed import is_main_process

# Catalog entries whose files the summary points to, by label.
_SUMMARY_OUTPUTS = {
    "LoRA": "lora",
    "learning curves": "finetune_curves",
    "reward by category": "finetune_reward_curves",
    "history": "finetune_history",
    "report": "evaluation_report",
    "comparison grid": "comparison_grid",
}


def _file(entry: Any) -> str | None:
    """The entry's file or folder, relative to the working directory when inside it (Kedro makes them absolute)."""
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("dataset"), dict):  # kedro-mlflow's artifact wrapper
        return _file(entry["dataset"])
    path = next((Path(entry[key]) for key in ("filepath", "path") if key in entry), None)
    if path is None:
        return None
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


class RunSummaryHook:
    """After a run that includes fine-tuning: reward at the start and end, KL bound, where to look next."""

    def __init__(self) -> None:
        self._conf_catalog: dict[str, Any] = {}

    @hook_impl
    def after_catalog_created(self, conf_catalog: dict[str, Any]) -> None:
        self._conf_catalog = conf_catalog

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        outputs = pipeline.all_outputs()
        if "finetune_history" not in outputs or not is_main_process():
            return
        evaluated = "evaluation_report" in outputs
        paths = {
            label: path for label, name in _SUMMARY_OUTPUTS.items()
            if (name in outputs or name == "lora") and (path := _file(self._conf_catalog.get(name)))
        }
        env = run_params.get("env")
        flag = f" --env {env}" if env and env != "local" else ""
        next_command = None if evaluated else (
            f"kedro run{flag} --pipelines pretrained_samples && kedro run{flag} --pipelines evaluate"
        )
        # Printed, not logged: a log handler would wrap the paths and prefix every line.
        print("\n" + run_summary(catalog.load("finetune_history"), paths, next_command), flush=True)


class TrackingStoreError(RuntimeError):
    """The MLflow tracking store of ``mlflow.yml`` cannot be opened."""


def tracking_uri(conf_mlflow: dict[str, Any], project_path: Path) -> str:
    """The tracking URI kedro-mlflow will use: ``server.mlflow_tracking_uri``, else $MLFLOW_TRACKING_URI, else
    ``mlruns``; a plain path is taken relative to the project, as kedro-mlflow does."""
    from urllib.parse import urlparse

    uri = (conf_mlflow.get("server") or {}).get("mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    if uri in ("databricks", "databricks-uc") or urlparse(uri).scheme:
        return uri
    return (project_path / uri).resolve().as_uri()


def check_tracking_store(uri: str, registry_uri: str | None = None) -> None:
    """Open the tracking store (and the model registry kedro-mlflow also opens) and read from it, with
    HTTP retries off, so a wrong URI fails in seconds; raises :class:`TrackingStoreError` saying what failed."""
    from mlflow.tracking import MlflowClient

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=registry_uri or uri)
        client.search_experiments(max_results=1)
        client._get_registry_client()  # kedro-mlflow builds it at start; a bad scheme fails here too
    except Exception as error:  # any store error: the message below says what to do
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise TrackingStoreError(f"{type(error).__name__}: {reason}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class TrackingStoreCheckHook:
    """Before kedro-mlflow sets up (``tryfirst``), open the configured tracking store once: a bad URI or an
    unwritable database stops the run at start with one message naming the setting, not after hours of
    training when the first metric is logged (or in a long traceback from kedro-mlflow's set-up)."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        import mlflow

        if mlflow.active_run() is not None or not is_main_process():  # set up elsewhere, or rank 0 tracks
            return
        loader = context.config_loader
        loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])
        try:
            conf_mlflow = dict(loader["mlflow"] or {})
        except MissingConfigException:
            conf_mlflow = {}
        uri = tracking_uri(conf_mlflow, Path(context.project_path))
        registry = (conf_mlflow.get("server") or {}).get("mlflow_registry_uri")
        try:
            check_tracking_store(uri, registry)
        except TrackingStoreError as error:
            raise TrackingStoreError(
                f"MLflow cannot open the tracking store {uri!r} (server.mlflow_tracking_uri in "
                f"conf/{context.env or 'local'}/mlflow.yml or conf/base/mlflow.yml): {error}. Fix the URI, or create "
                "the folder of a sqlite/file store and make it writable; the project's default is "
                "sqlite:///mlflow.db, a file in the project folder. Nothing has run yet."
            ) from None


class MainProcessWritesHook:
    """``accelerate launch ... -m kedro run``: every rank runs the pipeline, only rank 0 writes.

    On the other ranks the catalog keeps what nodes save in memory (later nodes of the run still load it)
    and writes nothing; their logs drop to warnings. kedro-mlflow is off on those ranks (settings.py)."""

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        if is_main_process():
            return
        saved: dict[str, Any] = {}
        read = catalog.load

        def load(ds_name: str, version: str | None = None) -> Any:
            return saved[ds_name] if ds_name in saved else read(ds_name, version)

        catalog.save = saved.__setitem__
        catalog.load = load
        for name in ("kedro", "dpok"):
            logging.getLogger(name).setLevel(logging.WARNING)
