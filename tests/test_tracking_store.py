"""Issue 15: a tracking store MLflow cannot open stops `kedro run` at start with one message naming the
setting, before any pipeline runs (not after hours, when the first metric is logged)."""

from __future__ import annotations

import subprocess
import time

import pytest

from dpok.hooks import TrackingStoreError, check_tracking_store, tracking_uri
from helpers import BIN, OFFLINE_ENV, copy_project


def test_the_uri_is_resolved_as_kedro_mlflow_resolves_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri({"server": {"mlflow_tracking_uri": "sqlite:///mlflow.db"}}, tmp_path) == "sqlite:///mlflow.db"
    assert tracking_uri({}, tmp_path) == (tmp_path / "mlruns").as_uri()
    assert tracking_uri({"server": {"mlflow_tracking_uri": "runs"}}, tmp_path) == (tmp_path / "runs").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_uri({"server": {"mlflow_tracking_uri": None}}, tmp_path) == "http://127.0.0.1:1"


def test_a_store_that_opens_passes_and_bad_ones_fail_fast(tmp_path, monkeypatch):
    check_tracking_store(f"sqlite:///{tmp_path / 'ok.db'}")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackingStoreError, match="maintenance mode"):  # MLflow 3 refuses file stores by default
        check_tracking_store((tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_tracking_store((tmp_path / "mlruns").as_uri())
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for uri, words in [
        ("bogus://nowhere", "bogus"),
        (f"sqlite:///{blocker}/mlflow.db", "a_file"),
    ]:
        with pytest.raises(TrackingStoreError, match=words):
            check_tracking_store(uri)
    start = time.monotonic()
    with pytest.raises(TrackingStoreError):
        check_tracking_store("http://127.0.0.1:9")  # nothing listens: no minutes of retries
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("uri", [
    "bogus://nowhere",
    pytest.param("sqlite:///{tmp}/a_file/mlflow.db", marks=pytest.mark.slow),  # in-process in this file too
])
def test_kedro_run_stops_before_any_node_with_one_clear_message(uri, tmp_path):
    project = copy_project(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    mlflow_yml = project / "conf/base/mlflow.yml"
    mlflow_yml.write_text(mlflow_yml.read_text().replace("sqlite:///mlflow.db", uri.format(tmp=tmp_path)))
    result = subprocess.run(
        [str(BIN / "kedro"), "run", "--pipelines", "prompts"], cwd=project, env=OFFLINE_ENV,
        capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "MLflow cannot open the tracking store" in output and "server.mlflow_tracking_uri" in output
    assert "Running node" not in output and not (project / "data/02_intermediate/prompts.parquet").exists()
