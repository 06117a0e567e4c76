"""README stays true: its commands are the ones the Makefile runs, and the cheap ones run here.

Covered elsewhere: `make test` is what CI runs (.ci/run); `kedro run --pipelines prompts` and the
finetune/evaluate pipelines have their own tests; `make run` and `dvc repro` are the slow checks
(tests/test_slow_end_to_end.py, `pytest -m slow`), which also runs `kedro run --env shapes_single` in full;
tests/pipelines/test_shapes_single_env.py runs it for two rounds; the `accelerate launch` command runs in
tests/pipelines/test_multiprocess_finetune.py (slow).
"""

import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from helpers import BIN, ROOT, copy_project
from helpers import OFFLINE_ENV as ENV

README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    lines = [line.split("#")[0].strip() for block in bash_blocks() for line in block.splitlines()]
    return [line for line in lines if line]


def test_quickstart_is_what_the_makefile_and_ci_run():
    makefile = (ROOT / "Makefile").read_text()
    assert "make run" in commands() and "make test" in commands()
    assert re.search(r"^run: install\n\t\$\(BIN\)/kedro run --pipelines finetune$", makefile, re.M)
    assert re.search(r'^test: install\n\t\$\(BIN\)/python -m pytest -m "not slow"$', makefile, re.M)
    assert "$(BIN)/python -m pip install -q torch==2.13.0" in makefile
    assert '$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"' in makefile
    assert "\nmake test\n" in (ROOT / ".ci/run").read_text()
    for line in (".venv/bin/pip install torch==2.13.0", '.venv/bin/pip install -c constraints.txt -e ".[test]"',
                 ".venv/bin/kedro run --pipelines finetune", '.venv/bin/python -m pytest -m "not slow"'):
        assert line in commands(), line


def test_every_readme_command_is_known():
    known = re.compile(
        r"^(make (run|test)|python3 -m venv \.venv|\.venv/bin/(pip|kedro|python) .*|export .*|kedro (registry list|run --pipelines \w+|run --env shapes_single|viz build)"
        r"|mlflow ui --backend-store-uri sqlite:///mlflow\.db|dvc (repro|metrics show|plots show|exp run -S .*|exp show"
        r"|remote add -d storage .*|push|pull|unfreeze pretrain && dvc repro pretrain)"
        r"|accelerate launch --multi_gpu --num_processes 2 -m kedro run --pipelines finetune)$"
    )
    unknown = [c for c in commands() if not known.match(c)]
    assert not unknown, f"README commands without a test: {unknown}"


def test_registry_list_and_viz_build_offline(tmp_path):
    project = copy_project(tmp_path)
    listed = subprocess.run([str(BIN / "kedro"), "registry", "list"], cwd=project, env=ENV, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    for name in ("__default__", "prompts", "pretrain", "pretrained_samples", "pretrained", "finetune", "evaluate",
                 "human_eval_import"):
        assert f"- {name}\n" in listed.stdout
    built = subprocess.run([str(BIN / "kedro"), "viz", "build"], cwd=project, env=ENV, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    assert (project / "build/index.html").exists()
    assert "finetune_node" in (project / "build/api/main").read_text()


@pytest.mark.slow  # 40 s of server start-up; the store itself is opened by every CI kedro run
def test_mlflow_ui_serves_the_sqlite_store(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("mlflow ui did not come up within 90 s")
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(not (ROOT / "data/06_models/shapes_base").exists(), reason="no shipped base model")
def test_lora_snippet_runs(tmp_path, monkeypatch):
    """The README's Python snippet, on a LoRA written like the finetune pipeline writes it."""
    import torch

    from dpok.models import attach_lora, load_pipeline, save_lora

    project = tmp_path / "p"
    shutil.copytree(ROOT / "data/06_models/shapes_base", project / "data/06_models/shapes_base")
    pipe = load_pipeline(str(project / "data/06_models/shapes_base"))
    for p in attach_lora(pipe.unet, 4, 4, ["to_q", "conv1"]):
        torch.nn.init.normal_(p, std=0.01)
    save_lora(pipe.unet, project / "data/06_models/lora")
    snippet = re.search(r"```python\n(.*?)```", README, flags=re.S).group(1)
    monkeypatch.chdir(project)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["image"].size == (32, 32)


def test_readme_is_a_users_document_that_cites_only_the_repo():
    assert len(README.splitlines()) <= 200
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        path = ROOT / name
        if not name.startswith(("src/", "conf/", "docs/", "scripts/", "notebooks/", "README.md")):
            continue
        if path.is_file():
            assert "shared/docs" not in path.read_text(errors="ignore"), name
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).is_file(), link


def test_make_refuses_a_python_other_than_3_11_and_says_how_to_fix_it(tmp_path):
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\nif [ "$1" = "-V" ]; then echo "Python 3.10.2"; exit 0; fi\nexit 1\n')
    fake.chmod(0o755)
    result = subprocess.run(["make", "install", f"VENV={tmp_path / 'venv'}", f"PYTHON={fake}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "dpok needs Python 3.11" in result.stdout and "make PYTHON=python3.11 install" in result.stdout
    assert not (tmp_path / "venv").exists()


def test_readme_results_are_rendered_from_the_committed_metrics_files():
    """The committed run's row and the ShapesEval line are what scripts/readme_results.py prints."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts/readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for line in module.lines(ROOT / "data/08_reporting"):
        assert line in README, f"README.md lacks (rerun python scripts/readme_results.py): {line}"


def test_the_shapeseval_experiment_tables_are_rendered_from_their_result_files():
    """docs/experiments.md holds, line for line, what scripts/shapeseval_table.py prints for each results folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shapeseval_table", ROOT / "scripts/shapeseval_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    experiments = (ROOT / "docs/experiments.md").read_text()
    for folder in sorted(p for p in (ROOT / "docs/experiments").glob("shapeseval_*") if p.is_dir()):
        for line in module.table(folder).splitlines():
            assert line in experiments, (
                f"docs/experiments.md lacks (rerun python scripts/shapeseval_table.py {folder.relative_to(ROOT)}): {line}")
