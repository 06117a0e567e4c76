"""Building typed configuration dataclasses from parameter mappings, with the full key path in errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_mapping(cls: type[T], params: Mapping[str, Any] | None, block: str) -> T:
    """``cls(**params)`` after refusing keys ``cls`` does not have, naming them as ``block.key``."""
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise ValueError(f"{block} must be a mapping of settings, got {type(params).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'{block}.{k}' for k in unknown)}; expected some of {sorted(known)}"
        )
    return cls(**params)
