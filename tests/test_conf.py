"""One home per setting: conf/base holds every setting once, an environment only what differs (Kedro's soft
merge of parameters, output folders by globals), and the configuration dataclasses hold no defaults of their
own: every run, test and script builds them from conf/base."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from kedro.framework.project import pipelines
from kedro.framework.startup import bootstrap_project

from dpok.config import flatten
from dpok.pipelines.finetune.nodes import FinetuneRunConfig
from helpers import ROOT, catalog_file, load_config

ENVIRONMENTS = ("shapes_single", "shapes_long", "sd15")
# What a run of an environment writes (the pretrain and select_prompts outputs are shared inputs).
RUN_PIPELINES = ("prompts", "pretrained_samples", "finetune", "evaluate", "human_eval_import")


@pytest.fixture(scope="module")
def loaded():
    bootstrap_project(ROOT)
    return {env: load_config(ROOT, env) for env in ("local", *ENVIRONMENTS)}


def _config_classes() -> list[type]:
    import dpok.evaluation.config
    import dpok.evaluation.probe
    import dpok.evaluation.shapeseval
    import dpok.pretraining.config
    import dpok.prompts.headroom
    import dpok.rl.config
    from dpok.config import SamplerConfig, Settings

    modules = (dpok.evaluation.config, dpok.evaluation.probe, dpok.evaluation.shapeseval, dpok.prompts.headroom, dpok.prompts.shapeseval,
               dpok.prompts.table, dpok.pretraining.config, dpok.rl.config)
    found = {SamplerConfig, FinetuneRunConfig}
    for module in modules:
        found |= {v for v in vars(module).values()
                  if isinstance(v, type) and issubclass(v, Settings) and dataclasses.is_dataclass(v)}
    return sorted(found, key=lambda cls: cls.__name__)


def test_configuration_dataclasses_hold_no_defaults_of_their_own():
    classes = _config_classes()
    assert len(classes) >= 15
    with_defaults = [f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls)
                     if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert not with_defaults, f"defaults live in conf/base only: {with_defaults}"


def test_conf_base_builds_every_block_and_the_finetune_block_round_trips(loaded):
    from dpok.evaluation import EvaluateConfig, HumanEvalConfig, HumanEvalImportConfig, SamplingConfig
    from dpok.evaluation.shapeseval import ShapesEvalConfig
    from dpok.pretraining import PretrainConfig
    from dpok.prompts import PromptsConfig
    from dpok.prompts.headroom import SelectPromptsConfig

    params = loaded["local"]["parameters"]
    finetune = FinetuneRunConfig.from_params(params["finetune"], params["sampler"])
    assert finetune.to_dict() == {**params["finetune"], "rl": {**params["finetune"]["rl"], "sampler": params["sampler"]}}
    sampling = SamplingConfig.from_params(params["pretrained_samples"], params["sampler"])
    assert sampling.sampler == finetune.rl.sampler  # one sampler for training and evaluation
    EvaluateConfig.from_dict(params["evaluate"])
    HumanEvalConfig.from_dict(params["human_eval"])
    HumanEvalImportConfig.from_dict(params["human_eval_import"])
    PretrainConfig.from_dict(params["pretrain"])
    PromptsConfig.from_dict(params["prompts"])
    assert ShapesEvalConfig.from_params(params["shapeseval"], params["sampler"]).sampling.sampler == finetune.rl.sampler
    SelectPromptsConfig.from_dict(params["select_prompts"])


def test_an_environment_that_changes_the_sampler_changes_it_for_training_and_evaluation(loaded):
    from dpok.evaluation import SamplingConfig
    from dpok.rl import FinetuneConfig

    params = loaded["sd15"]["parameters"]  # (its reward files are not here: the RL settings alone)
    training = FinetuneConfig.from_params(params["finetune"]["rl"], params["sampler"]).sampler
    evaluation = SamplingConfig.from_params(params["pretrained_samples"], params["sampler"]).sampler
    assert training == evaluation and (training.num_inference_steps, training.guidance_scale) == (50, 7.5)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_an_environment_file_holds_only_what_differs_from_base(env, loaded):
    base = flatten(loaded["local"]["parameters"])
    repeated = []
    for path in sorted((ROOT / "conf" / env).glob("parameters*.yml")):
        for key, value in flatten(yaml.safe_load(path.read_text())).items():
            if key in base and base[key] == value:
                repeated.append(f"{path.name}: {key}")
    assert not repeated, f"settings equal to conf/base (delete them from conf/{env}): {repeated}"
    # and what is not there comes from base
    merged = loaded[env]["parameters"]
    assert merged["sampler"]["eta"] == loaded["local"]["parameters"]["sampler"]["eta"]
    assert merged["finetune"]["rl"]["kl"]["form"] == loaded["local"]["parameters"]["finetune"]["rl"]["kl"]["form"]


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
    # DVC writes YAML 1.2, so "no" loses its quotes and YAML 1.1 (Kedro) reads False: RuntimeConfig maps it back.
    for data in (rewritten, original):
        runtime = data.get("finetune", {}).get("rl", {}).get("runtime", {})
        if runtime.get("mixed_precision") is False:
            runtime["mixed_precision"] = "no"
    assert rewritten == original


def test_the_long_environment_is_the_default_update_run_longer(loaded):
    """`shapes_long` changes the length, the probe's spacing and its output folders, nothing that shapes the update."""
    from dpok.config import flatten

    base, long = loaded["local"]["parameters"]["finetune"], loaded["shapes_long"]["parameters"]["finetune"]
    base_flat, long_flat = flatten(base), flatten(long)
    assert set(base_flat) == set(long_flat)
    differing = {k for k in base_flat if base_flat[k] != long_flat[k]}
    assert differing == {"checkpoint_dir", "probe.every_rounds", "rl.runtime.num_rounds"}
    assert long["rl"]["runtime"]["num_rounds"] >= 4 * base["rl"]["runtime"]["num_rounds"]
    assert loaded["shapes_long"]["parameters"]["prompts"] == loaded["local"]["parameters"]["prompts"]
