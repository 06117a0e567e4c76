"""scripts/shapeseval_table.py: one row per arm from its seeds' shapeseval.json files."""

import importlib.util
import json

import pytest

from helpers import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("shapeseval_table", ROOT / "scripts/shapeseval_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_average_the_seeds_with_a_t_interval(tmp_path):
    committed = json.loads((ROOT / "data/08_reporting/shapeseval.json").read_text())
    for seed, shift in ((0, 0.0), (1, 0.02)):
        result = json.loads(json.dumps(committed))
        result["overall"]["accuracy"]["difference"]["mean"] += shift
        (tmp_path / f"arm_seed{seed}.json").write_text(json.dumps(result))
    text = _module().table(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| arm | 0"))
    mean = committed["overall"]["accuracy"]["difference"]["mean"] + 0.01
    assert f"| arm | 0, 1 | {mean:+.3f} [" in row
    with pytest.raises(SystemExit, match="no <arm>_seed<S>.json"):
        _module().table(tmp_path / "empty")
