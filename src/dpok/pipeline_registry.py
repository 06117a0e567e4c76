"""Project pipelines: every folder of ``dpok.pipelines`` is found by ``find_pipelines``.

``__default__`` chains prompts → pretrained_samples → finetune → evaluate. ``pretrain`` (which retrains
the shipped base model, ~40 minutes on a CPU) is only run when asked for by name. ``pretrained`` is the
old name of ``pretrained_samples`` (the base model's evaluation samples), kept as an alias for a while
(``dpok.pipelines.pretrained``).
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

DEFAULT_PIPELINES = ("prompts", "pretrained_samples", "finetune", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in DEFAULT_PIPELINES if name in pipelines), Pipeline([])
    )
    return pipelines
