"""One home per setting: conf/base holds every setting once, an environment only what differs (Kedro's soft
merge of parameters, output folders by globals), and the dataclass defaults are conf/base's values."""

from __future__ import annotations

import pytest
import yaml
from kedro.framework.project import pipelines
from kedro.framework.startup import bootstrap_project

from dpok.pipelines.finetune.nodes import FinetuneRunConfig
from dpok.rl import FinetuneConfig
from helpers import ROOT, catalog_file, load_config

ENVIRONMENTS = ("shapes_single", "sd15")
# What a run of an environment writes (the pretrain and select_prompts outputs are shared inputs).
RUN_PIPELINES = ("prompts", "pretrained", "finetune", "evaluate", "human_eval_import")


@pytest.fixture(scope="module")
def loaded():
    bootstrap_project(ROOT)
    return {env: load_config(ROOT, env) for env in ("local", *ENVIRONMENTS)}


def test_finetune_dataclass_defaults_are_conf_base(loaded):
    finetune = loaded["local"]["parameters"]["finetune"]
    assert FinetuneConfig().to_dict() == finetune["rl"]
    run_defaults = {k: v for k, v in FinetuneRunConfig().__dict__.items() if k != "rl"}
    assert run_defaults == {k: v for k, v in finetune.items() if k != "rl"}


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            leaves |= _leaves(value, f"{prefix}{key}.")
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_an_environment_file_holds_only_what_differs_from_base(env, loaded):
    base = _leaves(loaded["local"]["parameters"])
    repeated = []
    for path in sorted((ROOT / "conf" / env).glob("parameters*.yml")):
        for key, value in _leaves(yaml.safe_load(path.read_text())).items():
            if key in base and base[key] == value:
                repeated.append(f"{path.name}: {key}")
    assert not repeated, f"settings equal to conf/base (delete them from conf/{env}): {repeated}"
    # and what is not there comes from base
    merged = loaded[env]["parameters"]
    assert merged["finetune"]["rl"]["eta"] == loaded["local"]["parameters"]["finetune"]["rl"]["eta"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_file_an_environment_writes_is_in_its_own_folders(env, loaded):
    base_catalog, catalog = loaded["local"]["catalog"], loaded[env]["catalog"]
    datasets = {"human_eval_ratings"}  # read by human_eval_import: the ratings of this run's key
    for name in RUN_PIPELINES:
        datasets |= pipelines[name].all_outputs()
    checked = 0
    for dataset in sorted(datasets):
        base_path = catalog_file(base_catalog.get(dataset))
        if base_path is None:
            continue  # in memory or MLflow only
        path = catalog_file(catalog.get(dataset))
        assert path != base_path and f"/{env}/" in path, (dataset, path)
        assert catalog[dataset]["type"] == base_catalog[dataset]["type"], dataset
        checked += 1
    assert checked >= 20
    checkpoints = loaded[env]["parameters"]["finetune"]["checkpoint_dir"]
    assert checkpoints == f"data/06_models/{env}/checkpoints"
    assert loaded["local"]["parameters"]["finetune"]["checkpoint_dir"] == "data/06_models/checkpoints"


def test_a_base_reward_is_turned_off_by_weight_zero():
    from dpok.rewards import UnknownRewardError, weighted_reward

    reward = weighted_reward({"shapes_judge": 0.0, "jpeg_compressibility": 1.0})
    assert reward.__doc__ == "Weighted reward 1*jpeg_compressibility."
    with pytest.raises(ValueError, match="every weight is 0"):
        weighted_reward({"shapes_judge": 0.0})
    with pytest.raises(UnknownRewardError, match="unknown reward 'shapes_jugde'"):
        weighted_reward({"shapes_jugde": 0.0, "shapes_judge": 1.0})


@pytest.mark.parametrize("path", sorted((ROOT / "conf").glob("*/parameters*.yml")), ids=lambda p: str(p)[len(str(ROOT)) + 1 :])
def test_dvc_exp_run_set_param_can_rewrite_every_parameter_file(path, tmp_path):
    """`dvc exp run -S file:key=value` goes through Hydra/OmegaConf, which fails on Kedro's ${globals:...}."""
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / path.name
    copy.write_text(path.read_text())
    top = next(iter(yaml.safe_load(path.read_text())))
    apply_overrides(copy, [f"+{top}.dvc_probe=1"])
    rewritten = yaml.safe_load(copy.read_text())
    assert rewritten[top]["dvc_probe"] == 1
    del rewritten[top]["dvc_probe"]
    original = yaml.safe_load(path.read_text())
    # DVC writes YAML 1.2, so "no" loses its quotes and YAML 1.1 (Kedro) reads False: FinetuneConfig maps it back.
    for data in (rewritten, original):
        rl = data.get("finetune", {}).get("rl", {})
        if rl.get("mixed_precision") is False:
            rl["mixed_precision"] = "no"
    assert rewritten == original
