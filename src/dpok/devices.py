"""Device and dtype names in parameters (``auto``, ``cpu``, ``cuda:1``, ``float16`` ...) to torch objects.

One resolver for every place a setting names a device: the finetune run, the evaluation sampler and the
reward models. Checking a name (:func:`check_device_name`) never touches a GPU, so parameters are
validated before anything loads.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE_KINDS = ("cpu", "cuda", "mps")


def check_device_name(key: str, name: str) -> None:
    """Refuse a device setting that is not ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``, naming ``key``."""
    ok = isinstance(name, str) and (name == "auto" or name.split(":")[0] in DEVICE_KINDS)
    if ok and ":" in name:
        index = name.split(":", 1)[1]
        ok = name.startswith("cuda:") and index.isdigit()
    if not ok:
        raise ValueError(f"{key} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}")


def check_dtype_name(key: str, name: str) -> None:
    """Refuse a dtype setting that is not ``auto`` or one of :data:`DTYPES`, naming ``key``."""
    if name != "auto" and name not in DTYPES:
        raise ValueError(f"{key} must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when torch sees one, else CPU; a named accelerator must be available."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available; use 'auto' or 'cpu'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` → float16 on CUDA and float32 elsewhere; else one of :data:`DTYPES` by name."""
    if isinstance(dtype, torch.dtype):
        return dtype
    check_dtype_name("dtype", dtype)
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def cpu_matmul_dtypes() -> dict[str, str]:
    """The half dtypes this CPU multiplies in hardware, each with the instructions that do it
    (``{"bfloat16": "AVX512-BF16"}``); a dtype missing here is emulated in float32, slower than float32.

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is true on any AVX-512 CPU, where
    bfloat16 is emulated, so this reads the instruction sets themselves.
    """
    found = {}
    if torch.cpu._is_amx_tile_supported():
        found["bfloat16"] = "AMX"
    elif torch.cpu._is_avx512_bf16_supported():
        found["bfloat16"] = "AVX512-BF16"
    if torch.cpu._is_amx_fp16_supported():
        found["float16"] = "AMX-FP16"
    return found


def cpp_compiler() -> str | None:
    """The C++ compiler ``torch.compile`` would use on a CPU (its inductor backend builds C++), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # inductor raises its own error types when no compiler is found
        return None
