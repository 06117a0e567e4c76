"""Typed configuration: one loader, one validator, the sampler block every pipeline shares.

The parameter files in ``conf/base`` are the one home of every default: the dataclasses here and in the
library packages declare fields without defaults where a parameter file provides them, and are built from
the merged parameters by :func:`from_mapping` (nested dataclass fields become nested blocks, an unknown or
missing key is an error naming its full path). Each dataclass checks its values in ``__post_init__`` with
the validators below, which name the key, say what is expected and catch YAML 1.1's number-as-text trap.

This module is the ground floor: it imports nothing of ours at module level, and ``dpok.settings`` takes
its :data:`CONFIG_LOADER_ARGS` from here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

T = TypeVar("T")

PROJECT_ROOT = Path(__file__).resolve().parents[2]

CONFIG_LOADER_ARGS: dict[str, Any] = {
    "base_env": "base",
    "default_run_env": "local",
    # kedro-mlflow reads mlflow.yml through the loader; it ships in conf/base so a fresh clone tracks
    # to the local sqlite store without a `kedro mlflow init` step.
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
    # An environment's parameter files hold only what differs from base: nested keys merge one by one
    # (a mapping such as `finetune.reward` merges too: a weight of 0 turns a base reward off).
    "merge_strategy": {"parameters": "soft"},
}
"""Arguments of Kedro's ``OmegaConfigLoader`` for this project (``settings.py`` and :func:`project_config`)."""


# --- validators ----------------------------------------------------------------------------------------


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fail(key: str, requirement: str, value: Any) -> NoReturn:
    """Raise the one error format of every setting: ``KEY must be REQUIREMENT, got VALUE`` (+ a YAML hint)."""
    hint = ""
    if isinstance(value, str) and _looks_numeric(value):
        hint = " (YAML 1.1 reads a number such as 1e-3 without a dot as text: write 1.0e-3)"
    raise ValueError(f"{key} must be {requirement}, got {value!r}{hint}")


def check_integer(key: str, value: Any, minimum: int | None = None, *, optional: bool = False) -> None:
    """An int (not a bool) of at least ``minimum``; None too where ``optional``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        what = "an integer" + ("" if minimum is None else f" >= {minimum}") + (" or null" if optional else "")
        fail(key, what, value)


def check_number(key: str, value: Any, *, gt: float | None = None, ge: float | None = None,
                 le: float | None = None, lt: float | None = None) -> None:
    """A finite int or float (not a bool) within the given bounds."""
    bounds = [(gt, ">", lambda v, b: v > b), (ge, ">=", lambda v, b: v >= b),
              (le, "<=", lambda v, b: v <= b), (lt, "<", lambda v, b: v < b)]
    requirement = " and ".join(f"{op} {b}" for b, op, _ in bounds if b is not None)
    what = "a number" + (f" {requirement}" if requirement else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(key, what, value)
    if not all(ok(value, b) for b, _, ok in bounds if b is not None):
        fail(key, what, value)


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """One of ``choices``."""
    if value not in choices:
        fail(key, f"one of {list(choices)}", value)


def check_boolean(key: str, value: Any) -> None:
    """true or false (YAML's yes/no are booleans too; a quoted "true" is text and refused)."""
    if not isinstance(value, bool):
        fail(key, "true or false", value)


class Settings:
    """Mixin of the configuration dataclasses: the validators bound to the block's key path.

    A subclass sets ``KEY_PATH`` (e.g. ``"finetune.rl.policy"``) and calls ``self.integer("p_step", 1)``
    and the like in ``__post_init__``; errors then name ``finetune.rl.policy.p_step``.
    """

    KEY_PATH: ClassVar[str] = ""

    def key(self, name: str) -> str:
        return f"{self.KEY_PATH}.{name}" if self.KEY_PATH else name

    def fail(self, name: str, requirement: str) -> NoReturn:
        fail(self.key(name), requirement, getattr(self, name))

    def integer(self, name: str, minimum: int | None = None, *, optional: bool = False) -> None:
        check_integer(self.key(name), getattr(self, name), minimum, optional=optional)

    def number(self, name: str, **bounds: float) -> None:
        check_number(self.key(name), getattr(self, name), **bounds)

    def choice(self, name: str, choices: Sequence[Any]) -> None:
        check_choice(self.key(name), getattr(self, name), choices)

    def boolean(self, name: str) -> None:
        check_boolean(self.key(name), getattr(self, name))

    def set(self, name: str, value: Any) -> None:
        """Normalise a field of the frozen dataclass (a YAML list to a tuple, say) after checking it."""
        object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None):
        """Build from the block's parameters (:func:`from_mapping` at ``KEY_PATH``)."""
        return from_mapping(cls, params, cls.KEY_PATH)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types, nested blocks as mappings and tuples as lists (what the YAML holds)."""
        return to_plain(self)


def to_plain(value: Any) -> Any:
    """A dataclass (nested too), tuple or mapping as plain dicts, lists and scalars."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (for messages and comparisons of nested settings)."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- building dataclasses from parameters -----------------------------------------------------------------


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


def _nested_dataclass(cls: type, name: str) -> type | None:
    """The dataclass type of field ``name`` of ``cls``, if it is one (``X`` or ``X | None``)."""
    hint = typing.get_type_hints(cls).get(name)
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def from_mapping(cls: type[T], params: Mapping[str, Any] | None, block: str, **given: Any) -> T:
    """``cls(**params)``, building nested dataclass fields from their sub-mappings, after refusing keys the
    dataclass does not have and naming required ones that are missing, both as ``block.key``.

    ``given`` supplies fields as built objects, in place of the block's own (e.g. the shared sampler, or a
    nested block built with more context).
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {k: v for k, v in check_keys(params, set(fields), block).items() if k not in given}
    for name, value in list(values.items()):
        nested = _nested_dataclass(cls, name)
        if nested is not None and not dataclasses.is_dataclass(value):
            values[name] = None if value is None else from_mapping(nested, value, f"{block}.{name}")
    values |= given
    missing = sorted(
        name for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(
            f"missing key(s) {', '.join(f'{block}.{k}' for k in missing)}; conf/base's parameter files hold every "
            "setting: merge your parameters with them (an environment lists only what differs)"
        )
    return cls(**values)


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in key by key (nested mappings too), as Kedro's soft merge does."""
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def with_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any], block: str) -> dict[str, Any]:
    """A copy of ``params`` with ``{"dotted.key": value}`` set, refusing a key path ``params`` lacks (a typo
    would otherwise be ignored, or only caught as an unknown key far from the command that set it)."""
    result = copy.deepcopy(dict(params))
    for dotted, value in overrides.items():
        node, parts = result, dotted.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:depth]) or "the top level"
                known = sorted(node) if isinstance(node, dict) else []
                raise ValueError(f"unknown setting {block}.{dotted}: no key {part!r} under {where}; known: {known}")
            if depth == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return result


# --- the sampler shared by training and evaluation --------------------------------------------------------


@dataclass(frozen=True)
class SamplerConfig(Settings):
    """How images are drawn from the diffusion model (``parameters_sampler.yml``, key ``sampler``): one
    block for DPOK's rounds (the policy), the base model's evaluation samples and the fine-tuned model's,
    so that an environment that changes the model changes its sampler everywhere at once.

    Attributes:
        num_inference_steps: DDIM steps T.
        guidance_scale: Classifier-free guidance weight w (CFG is off for w <= 1).
        eta: DDIM η in (0, 1]: every step a Gaussian with a density, the policy DPOK fine-tunes.
    """

    KEY_PATH: ClassVar[str] = "sampler"

    num_inference_steps: int
    guidance_scale: float
    eta: float

    def __post_init__(self) -> None:
        self.integer("num_inference_steps", 1)
        self.number("guidance_scale", ge=0)
        self.number("eta", gt=0, le=1)


# --- the project's merged configuration, outside a Kedro session ------------------------------------------


def project_config(name: str, env: str = "local", project_root: str | Path | None = None) -> dict[str, Any]:
    """The configuration ``name`` (``parameters``, ``catalog``, ...) that ``kedro run --env ENV`` sees:
    conf/base with the environment merged in, globals resolved; for scripts and notebooks that want a
    run's settings without a Kedro session."""
    from kedro.config import OmegaConfigLoader

    root = Path(project_root) if project_root is not None else PROJECT_ROOT
    loader = OmegaConfigLoader(conf_source=str(root / "conf"), env=env, **CONFIG_LOADER_ARGS)
    return loader[name]


def project_parameters(env: str = "local", project_root: str | Path | None = None) -> dict[str, Any]:
    """The parameters ``kedro run --env ENV`` sees (soft merge of the environment into conf/base)."""
    return project_config("parameters", env, project_root)
