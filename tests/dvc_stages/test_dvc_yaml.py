"""dvc.yaml must agree with the Kedro catalog: each stage's outputs are its pipeline's saved outputs."""

from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader
from kedro.framework.project import pipelines
from kedro.framework.startup import bootstrap_project

from helpers import catalog_file

ROOT = Path(__file__).resolve().parents[2]
# Written by the trainer itself (not a catalog entry): checkpoints, resumed from between runs.
TRAINER_OUTPUTS = {"finetune": {"data/06_models/checkpoints"}}


def kedro_stage_outputs(project_root: Path) -> dict[str, set[str]]:
    """{pipeline name: file paths its outputs are saved to}, from the base catalog."""
    bootstrap_project(project_root)
    catalog = OmegaConfigLoader(str(project_root / "conf"), base_env="base", default_run_env="base")["catalog"]
    outputs = {}
    for name, pipeline in pipelines.items():
        if name == "__default__":
            continue
        paths = {catalog_file(catalog.get(dataset)) for dataset in pipeline.all_outputs()}
        outputs[name] = {p for p in paths if p}
    return outputs


def _out_paths(stage: dict) -> set[str]:
    paths = set()
    for section in ("outs", "metrics", "plots"):
        for entry in stage.get(section, []):
            paths.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def _covered(path: str, outs: set[str]) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outs)


@pytest.fixture(scope="module")
def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.fixture(scope="module")
def kedro_outputs() -> dict[str, set[str]]:
    return kedro_stage_outputs(ROOT)


def test_one_stage_per_pipeline_running_it(dvc_stages, kedro_outputs):
    expected = {"prompts", "pretrain", "pretrained_samples", "finetune", "evaluate", "shapeseval"}
    assert set(dvc_stages) == expected
    assert expected <= set(kedro_outputs)
    for name, stage in dvc_stages.items():
        assert stage["cmd"] == f"kedro run --pipelines {name}"


@pytest.mark.parametrize("name", ["prompts", "pretrain", "pretrained_samples", "finetune", "evaluate", "shapeseval"])
def test_stage_outputs_match_the_catalog(name, dvc_stages, kedro_outputs):
    outs = _out_paths(dvc_stages[name])
    kedro = kedro_outputs[name]
    missing = sorted(p for p in kedro if not _covered(p, outs))
    assert not missing, f"stage {name}: Kedro writes {missing} but dvc.yaml does not list them"
    extra = sorted(o for o in outs - TRAINER_OUTPUTS.get(name, set()) if not any(_covered(p, {o}) for p in kedro))
    assert not extra, f"stage {name}: dvc.yaml lists {extra} that the Kedro pipeline does not write"


def test_no_two_stages_share_an_output(dvc_stages):
    seen: dict[str, str] = {}
    for name, stage in dvc_stages.items():
        for out in _out_paths(stage):
            assert out not in seen, f"{out} is an output of both {seen[out]} and {name}"
            seen[out] = name


def test_params_are_the_pipelines_parameter_files(dvc_stages):
    for name, stage in dvc_stages.items():
        for entry in stage["params"]:
            (path, keys), = entry.items()
            document = yaml.safe_load((ROOT / path).read_text())
            assert set(keys) <= set(document), f"stage {name}: {path} has no key(s) {set(keys) - set(document)}"
        files = {next(iter(e)) for e in stage["params"]}
        own = f"conf/base/parameters_{name}.yml"
        if (ROOT / own).exists():
            assert own in files, f"stage {name} does not depend on {own}"


def test_metrics_and_plots(dvc_stages):
    document = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert document["metrics"] == ["data/08_reporting/metrics.json", "data/08_reporting/shapeseval.json"]
    assert "data/08_reporting/finetune_history.csv" in document["plots"][0]
    assert document["stages"]["pretrain"]["frozen"] is True
    persist = [o for o in dvc_stages["finetune"]["outs"] if isinstance(o, dict) and "data/06_models/checkpoints" in o]
    assert persist and persist[0]["data/06_models/checkpoints"]["persist"] is True


def test_the_finetune_stage_depends_on_all_the_code_a_run_executes(dvc_stages):
    from dpok.provenance import RUN_CODE

    deps = set(dvc_stages["finetune"]["deps"])
    missing = [part for part in RUN_CODE if f"src/dpok/{part}".rstrip("/") not in deps]
    assert not missing, f"add to the finetune stage's deps in dvc.yaml: {missing}"


def test_stages_that_write_through_the_projects_datasets_depend_on_them(dvc_stages):
    """The image sets, the LoRA and the model folder are written by dpok.datasets: a change there reruns them."""
    for stage in ("pretrained_samples", "finetune", "evaluate"):
        assert "src/dpok/datasets" in dvc_stages[stage]["deps"], stage
