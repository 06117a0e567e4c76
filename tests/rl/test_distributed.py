"""Several processes, one algorithm (dpok.rl.distributed): sharing rules, and real 2-process runs on CPU
(`accelerate launch --multi_gpu`, gloo) against one process."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dpok.rl.distributed import Ranks, check_launch, start_ranks
from helpers import OFFLINE_ENV, accelerate_launch

DRIVER = Path(__file__).with_name("distributed_run.py")
THREAD_ENV = {**OFFLINE_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "ACCELERATE_USE_CPU")


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_cover_every_item_once_in_order(world_size):
    for n in range(12):
        shards = [Ranks(rank, world_size).shard(n) for rank in range(world_size)]
        assert [i for shard in shards for i in shard] == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_one_process_shares_nothing():
    ranks = Ranks()
    tensor = torch.arange(3.0)
    assert ranks.gather([1, 2]) == [1, 2] and torch.equal(ranks.sum(tensor), tensor)
    parameter = torch.nn.Parameter(torch.ones(2))
    parameter.grad = torch.full((2,), 3.0)
    ranks.sum_gradients([parameter])
    assert torch.equal(parameter.grad, torch.full((2,), 3.0))


def test_cpu_launch_that_starts_one_process_is_refused(monkeypatch):
    for name in _LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    check_launch()  # plain python: fine
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_PORT", "29500")  # what `accelerate launch --cpu --num_processes 2` leaves
    with pytest.raises(RuntimeError, match="--multi_gpu --num_processes N"):
        check_launch()


def test_a_fixed_gpu_with_several_processes_is_refused(monkeypatch):
    for name in _LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="finetune.device is 'cuda:1'.*set finetune.device to auto"):
        start_ranks("cuda:1")


def test_ranks_other_than_0_keep_kedro_outputs_in_memory(tmp_path, monkeypatch):
    from kedro.io import DataCatalog
    from kedro_datasets.json import JSONDataset

    from dpok.hooks import MainProcessWritesHook

    def catalog():
        return DataCatalog(datasets={"report": JSONDataset(filepath=str(tmp_path / "report.json"))})

    monkeypatch.setenv("RANK", "1")
    other = catalog()
    loggers = [logging.getLogger(name) for name in ("kedro", "dpok")]
    levels = [logger.level for logger in loggers]
    try:
        MainProcessWritesHook().after_catalog_created(other)
    finally:  # the hook quietens these loggers for the whole process; later tests read their INFO logs
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    other.save("report", {"a": 1})
    assert other.load("report") == {"a": 1} and not (tmp_path / "report.json").exists()
    monkeypatch.setenv("RANK", "0")
    main = catalog()
    MainProcessWritesHook().after_catalog_created(main)
    main.save("report", {"a": 2})
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": 2}


# --- real processes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, _base_pipeline):
    """One saved tiny pipeline that every process loads (two builds differ: see conftest.make_pipeline)."""
    folder = tmp_path_factory.mktemp("tiny_model")
    copy.deepcopy(_base_pipeline).save_pretrained(folder, safe_serialization=True)
    return folder


def run_driver(model: Path, out: Path, processes: int, *args: str, timeout: float = 240):
    """The driver in one plain process, or in ``processes`` under `accelerate launch --multi_gpu` (CPU)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(DRIVER)]
    if processes > 1:
        command = [*accelerate_launch(processes), str(DRIVER)]
    return subprocess.run([*command, str(model), str(out), *args], env=THREAD_ENV, capture_output=True,
                          text=True, timeout=timeout)


def _lora(out: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"lora_rank{rank}.safetensors"))


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _history(out: Path) -> np.ndarray:
    """Every metric of every round but the timings."""
    history = json.loads((out / "history.json").read_text())
    return np.array([[v for k, v in row.items() if not k.startswith("seconds_")] for row in history], dtype=float)


@pytest.fixture(scope="module")
def one_process(tiny_model, tmp_path_factory):
    """The one-process reference, run in this process (no start-up) with one thread like each rank."""
    import importlib.util

    out = tmp_path_factory.mktemp("one_process")
    spec = importlib.util.spec_from_file_location("distributed_run", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    threads = torch.get_num_threads()
    try:
        driver.main([str(tiny_model), str(out)])
    finally:
        torch.set_num_threads(threads)
    return out


def test_two_processes_train_the_same_lora_as_one(tiny_model, one_process, tmp_path):
    done = run_driver(tiny_model, tmp_path, 2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _max_difference(_lora(tmp_path, 0), _lora(tmp_path, 1)) == 0.0  # the ranks agree exactly
    trained = _max_difference(_lora(one_process), {k: torch.zeros_like(v) for k, v in _lora(one_process).items()})
    assert trained > 1e-3  # the LoRA moved (B starts at zero), so equality below means something
    # The same pieces computed and added in the same order: equal to the last bit (the issue asks <= 1e-5).
    assert _max_difference(_lora(tmp_path), _lora(one_process)) == 0.0
    np.testing.assert_array_equal(_history(tmp_path), _history(one_process))
    assert not (tmp_path / "lora_rank2.safetensors").exists()


@pytest.mark.slow
def test_without_the_gradient_all_reduce_the_ranks_drift_apart(tiny_model, tmp_path):
    """The control: with the reduce removed each rank steps on its half of every micro-batch."""
    done = run_driver(tiny_model, tmp_path, 2, "--no-grad-sync")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _max_difference(_lora(tmp_path, 0), _lora(tmp_path, 1)) > 1e-4


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_with_its_error(tiny_model, tmp_path):
    done = run_driver(tiny_model, tmp_path, 2, "--fail-rank", "1", "--fail-after", "3", timeout=180)
    assert done.returncode != 0
    assert "rank 1: reward model failed" in done.stderr + done.stdout
    assert not (tmp_path / "lora_rank0.safetensors").exists()


@pytest.mark.slow
def test_resume_with_the_same_and_another_number_of_processes(tiny_model, one_process, tmp_path):
    first = run_driver(tiny_model, tmp_path / "two", 2, "--rounds", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    # The run's state does not depend on N: the same two processes, or one, carry it on.
    for name, processes in (("same", 2), ("other", 1)):
        resumed = tmp_path / name
        shutil.copytree(tmp_path / "two" / "checkpoints", resumed / "checkpoints")
        done = run_driver(tiny_model, resumed, processes, "--rounds", "3")
        assert done.returncode == 0, done.stderr[-3000:]
        assert _max_difference(_lora(resumed), _lora(one_process)) == 0.0, name
        np.testing.assert_array_equal(_history(resumed), _history(one_process))
