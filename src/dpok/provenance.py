"""What a fine-tuning run's result depends on, as hashes: its settings, prompts and model, and the source
code that computes it. A checkpoint is resumed only by a run whose identity matches, so a code change
retrains instead of "resuming" a finished run of the old code (and DVC never records old outputs as the
product of new code)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent

# The parts of the package a finetune run executes: the algorithm, the rewards, model loading and LoRA,
# the shapes world (judge and quality), the settings and image plumbing, device handling and the finetune node.
RUN_CODE = ("rl", "rewards", "models", "world", "config.py", "devices.py", "images.py", "pipelines/finetune")

IDENTITY_FILE = "identity.json"


def source_digests(parts: tuple[str, ...] = RUN_CODE, root: Path = PACKAGE_ROOT) -> dict[str, str]:
    """``{path relative to the package: sha256 of its bytes}`` for every ``.py`` file of ``parts``."""
    digests = {}
    for part in parts:
        base = root / part
        files = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for file in files:
            digests[file.relative_to(root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    if not digests:
        raise FileNotFoundError(f"no source files found for {parts} under {root}")
    return dict(sorted(digests.items()))


def digest(value: Any) -> str:
    """sha256 of a JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def run_identity(settings: dict[str, Any], code: dict[str, str]) -> dict[str, Any]:
    """The identity written next to a run's checkpoints: the settings' hash and every source file's."""
    return {"settings": digest(settings), "code": code}


def identity_fingerprint(identity: dict[str, Any]) -> str:
    """12 hex digits naming the run's checkpoint folder."""
    return digest(identity)[:12]


def write_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    """Write ``identity.json`` into ``run_dir`` atomically (a temp file, then one rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".identity-", dir=run_dir)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(identity, file, indent=1, sort_keys=True)
        os.replace(tmp, run_dir / IDENTITY_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def changed_code_since(checkpoint_root: Path, identity: dict[str, Any]) -> tuple[Path, list[str]] | None:
    """An earlier run under ``checkpoint_root`` with the same settings but other code, and the files that
    differ (added, removed or changed), or None. Explains why a run starts afresh."""
    for other in sorted(checkpoint_root.glob(f"run-*/{IDENTITY_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            saved = json.loads(other.read_text())
        except (OSError, ValueError):
            continue  # unreadable: nothing to explain with
        if saved.get("settings") != identity["settings"] or saved.get("code") == identity["code"]:
            continue
        old, new = saved.get("code") or {}, identity["code"]
        changed = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
        return other.parent, changed
    return None
