"""Building typed configuration dataclasses from parameter mappings, with the full key path in errors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def check_keys(params: Mapping[str, Any] | None, known: set[str], block: str) -> dict[str, Any]:
    """``params`` as a dict after refusing a non-mapping or keys not in ``known``, naming ``block.key``."""
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise ValueError(f"{block} must be a mapping of settings, got {type(params).__name__}")
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'{block}.{k}' for k in unknown)}; expected some of {sorted(known)}"
        )
    return dict(params)


def from_mapping(cls: type[T], params: Mapping[str, Any] | None, block: str) -> T:
    """``cls(**params)`` after refusing keys the dataclass ``cls`` does not have, naming them as ``block.key``."""
    return cls(**check_keys(params, {f.name for f in fields(cls)}, block))


def project_config(name: str, env: str = "local", project_root: str | Path | None = None) -> dict[str, Any]:
    """The configuration ``name`` (``parameters``, ``catalog``, ...) that ``kedro run --env ENV`` sees:
    conf/base with the environment merged in, globals resolved; for scripts and notebooks that want a
    run's settings without a Kedro session."""
    from kedro.config import OmegaConfigLoader

    from dpok.settings import CONFIG_LOADER_ARGS

    root = Path(project_root) if project_root is not None else Path(__file__).resolve().parents[2]
    loader = OmegaConfigLoader(conf_source=str(root / "conf"), env=env, **CONFIG_LOADER_ARGS)
    return loader[name]


def project_parameters(env: str = "local", project_root: str | Path | None = None) -> dict[str, Any]:
    """The parameters ``kedro run --env ENV`` sees (soft merge of the environment into conf/base)."""
    return project_config("parameters", env, project_root)
