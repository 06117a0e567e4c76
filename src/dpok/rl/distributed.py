"""Several processes, one algorithm: how a DPOK round is shared between ranks (docs/distributed.md).

``accelerate launch --multi_gpu --num_processes N -m kedro run --pipelines finetune`` starts N ranks
(torchrun under accelerate; NCCL on GPUs, gloo on CPU). They run the same round as one process would:

- the round's trajectories are split into contiguous chunks (``runtime.sample_batch_size``, by default one per
  rank); every random draw comes from a stream keyed by (seed, round, trajectory index), so rank r samples
  exactly the trajectories one process would, and after an all-gather every rank holds the whole round;
- the expensive per-item work (rewards, the value function's x̂_0 scores, the KL report) is shared the same
  way and gathered, so every rank sees the same rewards, statistics, buffer and advantages;
- each value and policy micro-batch is drawn from the same stream on every rank; its rows are computed in
  chunks (``runtime.update_batch_size``, by default one per rank), each rank its own, every chunk's mean loss
  weighted by its share of the rows, and the micro-batch's gradients are summed over ranks, so the step
  is the one-process step on the whole micro-batch (bitwise so with the same chunk sizes);
- only the main rank writes checkpoints (the others wait at a barrier) and, in Kedro, outputs and MLflow.

With one process every operation here is the identity, so the single-process code path is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 outside a distributed launch); no process group needed."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True outside a distributed launch and on rank 0 of one (from the launcher's environment)."""
    return launched_rank() == 0


def check_launch() -> None:
    """Refuse ``accelerate launch --cpu --num_processes N`` (N > 1), which starts a single process.

    Without ``--mpirun_hostfile`` accelerate's CPU launcher runs one process and only sets the master
    address; training would silently run on one rank.
    """
    asked_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if asked_cpu and "MASTER_PORT" in os.environ and "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "`accelerate launch --cpu --num_processes N` started a single process: accelerate's CPU launcher "
            "needs MPI (--mpirun_hostfile) for more. On CPU start N processes with "
            "`accelerate launch --multi_gpu --num_processes N -m kedro run --pipelines finetune` (torchrun, gloo "
            "backend; it needs no GPU), or drop --num_processes for one process"
        )


@dataclass(frozen=True)
class Ranks:
    """The processes of a run. ``Ranks()`` is a single process, where every method is the identity."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> range:
        """This rank's contiguous share of ``range(n)``; shares differ in size by at most one."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def chunks(self, n: int, size: int | None = None) -> list[range]:
        """This rank's chunks of ``range(n)``: the chunks are ``size`` items long (default ``ceil(n / world
        size)``, one per rank) and split between the ranks as :meth:`shard` splits items.

        The chunking does not depend on the number of ranks when ``size`` is given, so N ranks compute
        exactly the pieces one process computes (a batched forward pass is not bitwise the same for
        another batch size)."""
        size = size or max(1, -(-n // self.world_size))
        every = [range(start, min(start + size, n)) for start in range(0, n, size)]
        mine = self.shard(len(every))
        return every[mine.start : mine.stop]

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's ``items`` concatenated in rank order (picklable objects; move tensors to CPU first)."""
        if not self.distributed:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``tensor`` (a new tensor)."""
        if not self.distributed:
            return tensor.clone()
        from accelerate.utils import reduce

        return reduce(tensor, reduction="sum")

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its sum over ranks (one all-reduce; a missing gradient counts as zero)."""
        if not self.distributed:
            return
        parameters = [p for p in parameters if p.requires_grad]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
        summed = self.sum(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for parameter, grad in zip(parameters, grads):
            parameter.grad = summed[offset : offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    def barrier(self) -> None:
        if self.distributed:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def start_ranks(device: str) -> tuple[Ranks, torch.device | None]:
    """The run's ranks and, in a distributed launch, this rank's device (None: resolve ``device`` as usual).

    ``device`` is ``finetune.device``: with several ranks it must be ``auto``, ``cuda`` or ``cpu`` (each rank
    takes its own GPU, ``cuda:<local rank>``); a fixed ``cuda:N`` would put every rank on one GPU.
    """
    check_launch()
    if launched_world_size() == 1:
        return Ranks(), None
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(
            f"finetune.device is {device!r}, but {launched_world_size()} processes were launched: each takes its "
            "own GPU, so set finetune.device to auto (or cuda, or cpu)"
        )
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if state.num_processes != launched_world_size():
        raise RuntimeError(
            f"the launcher started {launched_world_size()} processes but accelerate joined {state.num_processes}"
        )
    return Ranks(rank=state.process_index, world_size=state.num_processes), state.device


__all__ = ["Ranks", "check_launch", "is_main_process", "launched_rank", "launched_world_size", "start_ranks"]
