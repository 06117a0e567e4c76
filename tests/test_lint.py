"""`ruff check` (pyproject.toml's [tool.ruff]: pyflakes, pycodestyle, import order, pyupgrade) passes on the
code, tests and scripts: CI runs it here, through the README's test command."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    ruff = str(ruff) if ruff.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: `pip install -e .[test]` installs it (pyproject.toml)")
    result = subprocess.run([ruff, "check", "src", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
