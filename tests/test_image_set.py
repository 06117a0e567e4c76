"""Issue 15: an image set (`pretrained_samples`, `finetuned_samples`) is swapped in whole, so a run killed
while writing it leaves the previous set; and a set that does not match its manifest is refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dpok.datasets import AtomicPartitionedDataset
from dpok.evaluation.manifest import check_saved, partition_id, pixel_digest


def _dataset(folder: Path) -> AtomicPartitionedDataset:
    return AtomicPartitionedDataset(path=str(folder), dataset="pillow.ImageDataset", filename_suffix=".png",
                                    overwrite=True)


def _image(value: int) -> Image.Image:
    return Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8))


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_save_that_fails_half_way_leaves_the_previous_set(tmp_path):
    folder = tmp_path / "samples"
    _dataset(folder).save({f"img{i}": _image(i) for i in range(3)})
    before = _contents(folder)

    def broken():
        raise RuntimeError("the sampler died")

    with pytest.raises(Exception, match="sampler died"):  # kedro wraps it in a DatasetError
        _dataset(folder).save({"img0": lambda: _image(9), "img1": broken, "img2": lambda: _image(9)})
    assert _contents(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == ["samples"]
    _dataset(folder).save({"new": _image(5)})  # overwrite: only the new set, no leftovers of the old
    assert list(_contents(folder)) == ["new.png"]
    assert set(_dataset(folder).load()) == {"new"}


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from PIL import Image
from dpok.datasets import AtomicPartitionedDataset

def image(i):
    if i == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # killed with two of four images written
    return Image.fromarray(np.full((4, 4, 3), 100 + i, dtype=np.uint8))

AtomicPartitionedDataset(path=sys.argv[1], dataset="pillow.ImageDataset", filename_suffix=".png", overwrite=True).save(
    {f"img{i}": (lambda i=i: image(i)) for i in range(4)})
"""


def test_a_write_killed_with_sigkill_leaves_the_previous_set_and_the_next_save_clears_its_leftovers(tmp_path):
    folder = tmp_path / "samples"
    _dataset(folder).save({f"img{i}": _image(i) for i in range(3)})
    before = _contents(folder)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(folder)], timeout=120)
    assert result.returncode == -9
    assert _contents(folder) == before  # the complete set, untouched
    (leftover,) = [p for p in tmp_path.iterdir() if p.name != "samples"]
    assert leftover.name.startswith(".samples.tmp-") and len(list(leftover.iterdir())) == 2
    assert set(_dataset(folder).load()) == {"img0", "img1", "img2"}  # the half set is never read
    _dataset(folder).save({"img0": _image(7)})
    assert [p.name for p in tmp_path.iterdir()] == ["samples"]


def test_images_that_are_not_the_manifests_are_refused_with_the_rerun(tmp_path):
    folder = tmp_path / "samples"
    images = {f"p0000_s0{i}": _image(10 * i) for i in range(3)}
    _dataset(folder).save(images)
    manifest = pd.DataFrame({"file": [f"{k}.png" for k in images],
                             "pixels_sha256": [pixel_digest(v) for v in images.values()]})
    check_saved(manifest, _dataset(folder).load(), "base-model")
    _image(99).save(folder / "p0000_s01.png")  # another run's image under the same name
    with pytest.raises(RuntimeError, match=r"1 of 3 base-model image\(s\).*'p0000_s01.png'.*kedro run --pipelines pretrained"):
        check_saved(manifest, _dataset(folder).load(), "base-model", rerun="kedro run --pipelines pretrained")
    (folder / "p0000_s02.png").unlink()
    with pytest.raises(RuntimeError, match="missing on disk"):
        check_saved(manifest, _dataset(folder).load(), "base-model")
    assert partition_id("p0000_s00.png") == "p0000_s00"
