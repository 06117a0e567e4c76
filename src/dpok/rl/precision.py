"""How a run computes (``finetune.rl.runtime.precision`` and ``.compile``; docs/throughput.md): the precision
the diffusion model runs in, whether it is compiled, and the batch shape of its calls.

The rule that keeps the ratio exact: sampling and the update's rescoring run the UNet through the same
code, in the same dtype, on calls of the same shape (:func:`dpok.rl.sampling.guided_noise_prediction` with
``call_rows``, :attr:`dpok.rl.context.RoundContext.call_rows`), so that before any update the rescored log-probability of every sampled
transition is the sampler's to the last bit (``first_update_max_abs_log_ratio`` in ``python -m
dpok.bench``). A GEMM may pick another kernel, and so another order of summation, for another number of
rows; padding every call to one shape takes that choice away. In float32 eager (``fp32``, no compile) the
calls are left as they always were.

What stays float32 in every precision: the LoRA weights and their AdamW state, the DDIM step arithmetic,
log-probabilities, ratios, advantages, the KL and the value function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dpok.devices import cpp_compiler, cpu_matmul_dtypes
from dpok.rl.config import RuntimeConfig

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
_KEY = RuntimeConfig.KEY_PATH


@dataclass(frozen=True)
class RunPrecision:
    """``runtime.precision`` and ``runtime.compile`` resolved for one machine (:func:`resolve_precision`).

    Attributes:
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (never ``"auto"``).
        device_type: ``"cpu"``, ``"cuda"`` or ``"mps"``.
        compile: Whether the UNet is compiled for the run.
        reason: What was chosen and why, in words (what ``auto`` chose and what the machine has), for the log.
        warning: What the machine does badly with this choice, for the log, or None.
    """

    name: str
    device_type: str
    compile: bool
    reason: str
    warning: str | None

    @property
    def fixed_call_shape(self) -> bool:
        """Every UNet call of sampling and the update gets the same shape (all but float32 eager, which
        stays bitwise as it was)."""
        return self.name != "fp32" or self.compile

    @property
    def dtype(self) -> torch.dtype | None:
        """The half dtype the UNet computes in, or None for float32."""
        return HALF_DTYPES.get(self.name)

    @property
    def holds_half_weights(self) -> bool:
        """On a CPU the frozen UNet weights are held in the half dtype for the run: CPU autocast casts each
        weight again at every call, which costs more than bfloat16 saves on a small model."""
        return self.dtype is not None and self.device_type == "cpu"

    @property
    def loss_scaling(self) -> bool:
        return self.name == "fp16"


def _auto_precision(device: torch.device, unet_dtype: torch.dtype) -> tuple[str, str]:
    if device.type == "cuda":
        if unet_dtype in (torch.float16, torch.bfloat16):
            name = "fp16" if unet_dtype == torch.float16 else "bf16"
            return name, f"the UNet's weights are {_DTYPE_NAMES[unet_dtype]}"
        if torch.cuda.is_bf16_supported():
            return "bf16", "the GPU has bfloat16"
        return "fp16", "the GPU lacks bfloat16"
    if device.type == "cpu":
        # Measured (docs/throughput.md): with AMX bfloat16 ran the shapes UNet 1.25 times faster than float32;
        # with AVX512-BF16 alone (no AMX) a whole bench round 1.16 times faster (quiet machine, 2 threads).
        hardware = cpu_matmul_dtypes().get("bfloat16")
        if hardware:
            return "bf16", f"this CPU multiplies bfloat16 with {hardware}"
        return "fp32", "this CPU has no bfloat16 matrix multiplication (neither AMX nor AVX512-BF16)"
    return "fp32", f"half precision is not set up for {device.type}"


def _auto_compile(device: torch.device, precision: str) -> tuple[bool, str]:
    # Measured (docs/throughput.md): compilation takes minutes on a CPU and changed the rounding between
    # the inference and the training graph, so the ratio was no longer exact; not chosen automatically.
    return False, "auto does not compile (docs/throughput.md)"


def resolve_precision(runtime: RuntimeConfig, device: torch.device, unet_dtype: torch.dtype) -> RunPrecision:
    """The run's :class:`RunPrecision` on ``device`` for a UNet whose weights are ``unet_dtype``.

    A choice the machine cannot honour is an error naming the key, what the machine lacks and what
    ``auto`` would choose: bf16 where neither the CPU (AMX, AVX512-BF16) nor the GPU has bfloat16,
    compile without a compiler. fp16 on a CPU without AMX-FP16 runs emulated, slowly: it is kept as a
    CPU stand-in for the GPU recipe (loss scaling), with a warning.
    """
    device = torch.device(device)
    auto_name, auto_why = _auto_precision(device, unet_dtype)
    name, reason, warning = runtime.precision, f"{_KEY}.precision: {runtime.precision}", None
    if name == "auto":
        name, reason = auto_name, f"{_KEY}.precision: auto chose {auto_name} ({auto_why})"
    elif name == "bf16" and device.type == "cpu" and "bfloat16" not in cpu_matmul_dtypes():
        raise ValueError(
            f"{_KEY}.precision is bf16 but this CPU has no bfloat16 matrix multiplication (neither AMX nor "
            f"AVX512-BF16): it would be emulated, slower than float32. auto would choose {auto_name} here"
        )
    elif name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{_KEY}.precision is bf16 but this GPU has no bfloat16; auto would choose {auto_name} here")
    elif name == "fp16" and device.type == "cpu" and "float16" not in cpu_matmul_dtypes():
        warning = (
            f"{_KEY}.precision is fp16 on a CPU without float16 matrix multiplication (AMX-FP16): emulated, "
            f"slower than float32 (useful only to check the GPU recipe); auto would choose {auto_name} here"
        )

    compile_, compile_why = runtime.compile, f"{_KEY}.compile: {runtime.compile}"
    if compile_ == "auto":
        compile_, why = _auto_compile(device, name)
        compile_why = f"{_KEY}.compile: {why}"
    if compile_:
        missing = _compiler_missing(device)
        if missing:
            raise ValueError(f"{_KEY}.compile is true but {missing}; auto would not compile here")
    return RunPrecision(name=name, device_type=device.type, compile=bool(compile_),
                        reason=f"{reason}; {compile_why}", warning=warning)


def _compiler_missing(device: torch.device) -> str | None:
    """What torch.compile lacks on ``device`` (None if nothing)."""
    if device.type == "cpu" and cpp_compiler() is None:
        return ("torch.compile needs a C++ compiler on a CPU and none was found (looked for "
                f"{torch._inductor.config.cpp.cxx!r}; install g++ or set CXX)")
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile needs Triton on a GPU and it is not installed"
    if device.type not in ("cpu", "cuda"):
        return f"torch.compile is not set up for {device.type}"
    return None


def autocast(precision: RunPrecision) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in the half dtype for the diffusion model's forward passes; a no-op in float32 and
    where the weights are held in the half dtype (:func:`half_weights`)."""
    if precision.dtype is None or precision.holds_half_weights:
        return contextlib.nullcontext()
    return torch.autocast(device_type=precision.device_type, dtype=precision.dtype)


@contextlib.contextmanager
def half_weights(unet: torch.nn.Module, precision: RunPrecision) -> Iterator[None]:
    """Where :attr:`RunPrecision.holds_half_weights`: the UNet's frozen weights in the half dtype for the
    block (forward and backward passes alike), the LoRA weights float32 (peft runs the adapter in their
    dtype); then the float32 originals back, not rounded ones. Between the blocks the pipeline is the
    caller's as it was (an evaluation hook sees the float32 model). A no-op elsewhere."""
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    if precision.holds_half_weights:
        for name, tensor in [*unet.named_parameters(), *unet.named_buffers()]:
            if "lora_" not in name and tensor.is_floating_point() and tensor.dtype != precision.dtype:
                kept.append((tensor, tensor.data))
                tensor.data = tensor.data.to(precision.dtype)
    try:
        yield
    finally:
        for tensor, data in kept:
            tensor.data = data


@contextlib.contextmanager
def diffusion_passes(unet: torch.nn.Module, precision: RunPrecision) -> Iterator[None]:
    """Forward passes only (sampling, the KL report) in ``precision``: :func:`half_weights` and :func:`autocast`."""
    with half_weights(unet, precision), autocast(precision):
        yield


def compiled(unet: torch.nn.Module, precision: RunPrecision) -> torch.nn.Module:
    """``unet`` compiled (``torch.compile``, static shapes: every call has the same shape) where
    :attr:`RunPrecision.compile`, else ``unet`` itself. The wrapper shares the module: adapters switched
    off on ``unet`` are off in it too."""
    return torch.compile(unet, dynamic=False) if precision.compile else unet


__all__ = ["HALF_DTYPES", "RunPrecision", "autocast", "compiled", "diffusion_passes", "half_weights",
           "resolve_precision"]
