"""A PartitionedDataset whose folder appears whole or not at all: an image set written by a run that is
killed half-way is never left where the next step (or DVC) would take it for a complete set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from kedro_datasets.partitions import PartitionedDataset

from dpok.datasets.atomic import write_folder_atomically


class AtomicPartitionedDataset(PartitionedDataset):
    """``partitions.PartitionedDataset`` (same arguments) that, on a local path with ``overwrite: true``,
    writes every partition into a hidden sibling folder and swaps it in with one rename once all are
    written. The previous set stays in place until then; a killed run leaves only the hidden folder,
    which the next save removes. Other filesystems save as ``PartitionedDataset`` does."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_kwargs = kwargs

    def save(self, data: dict[str, Any]) -> None:
        if not (self._overwrite and isinstance(self._filesystem, LocalFileSystem)):
            super().save(data)
            return

        def write(folder: Path) -> None:
            PartitionedDataset(**{**self._init_kwargs, "path": str(folder), "overwrite": False}).save(data)

        write_folder_atomically(self._normalized_path, write)
        self._invalidate_caches()
