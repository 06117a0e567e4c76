"""Reading and validating prompt sets.

Supported files: ``.txt`` (one prompt per line), ``.csv``/``.tsv`` (a ``prompt`` column, optional
``category``, ``split`` and any extra columns, which are kept), ``.json`` (a list of strings, or of
objects with a ``prompt`` key) and ``.jsonl`` (one string or object per line).

Every failure is a :class:`PromptFileError` naming the file and saying what to fix, raised before any
model is loaded, so a typo never costs a training run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from dpok.config import Settings

logger = logging.getLogger(__name__)

SPLITS = ("train", "heldout")
SUPPORTED_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".jsonl")
DEFAULT_CATEGORY = "uncategorised"


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class PromptsConfig(Settings):
    """Parameters of prompt ingestion (``conf/base/parameters_prompts.yml``, key ``prompts``).

    Attributes:
        path: The prompt file, relative to the project root or absolute.
        max_chars: Longest prompt accepted; longer ones are an error, not silently truncated.
        heldout_fraction: Share of prompts put in the ``heldout`` split when the file gives no
            ``split`` column. The choice hashes the prompt text, so it never changes between runs.
    """

    KEY_PATH: ClassVar[str] = "prompts"

    path: str
    max_chars: int
    heldout_fraction: float

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.strip():
            self.fail("path", "a non-empty path to a prompt file")
        self.integer("max_chars", 1)
        self.number("heldout_fraction", ge=0, lt=1)


def _fail(path: Path, problem: str, fix: str) -> PromptFileError:
    return PromptFileError(f"prompt file '{path}': {problem}. Fix: {fix}")


def _read_text(path: Path) -> str:
    if not path.exists():
        raise _fail(path, "does not exist", "set prompts.path to an existing .txt/.csv/.tsv/.json/.jsonl file")
    if not path.is_file():
        raise _fail(path, "is not a file", "point prompts.path at a file, not a directory")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _fail(
            path, f"is not valid UTF-8 (byte {error.start})", "re-save the file with UTF-8 encoding"
        ) from None


def _records_from_json_items(path: Path, items: list[Any], where: str) -> list[dict[str, Any]]:
    records = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            records.append({"prompt": item})
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
            records.append(dict(item))
        else:
            raise _fail(
                path,
                f"{where} {index + 1} is {type(item).__name__}, not a prompt string or an object "
                "with a string 'prompt'",
                'write each entry as "text" or {"prompt": "text", ...}',
            )
    return records


def read_prompt_file(path: str | Path) -> pd.DataFrame:
    """Read a prompt file into a table with at least a ``prompt`` column (strings, unvalidated)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise _fail(
            path, f"has unknown extension '{path.suffix}'", f"use one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    text = _read_text(path)
    if suffix == ".txt":
        return pd.DataFrame({"prompt": text.splitlines()}, dtype=object)
    if suffix in (".csv", ".tsv"):
        rows = list(csv.reader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        rows = [row for row in rows if any(cell.strip() for cell in row)]
        if not rows:
            raise _fail(path, "is empty", "add a header line with a 'prompt' column and one prompt per row")
        header = [cell.strip() for cell in rows[0]]
        if "prompt" not in header:
            raise _fail(
                path,
                f"has no 'prompt' column (header: {header})",
                "name the column holding the prompts 'prompt'",
            )
        for line_number, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise _fail(
                    path,
                    f"row {line_number} has {len(row)} fields, the header has {len(header)}",
                    "quote fields that contain the delimiter",
                )
        return pd.DataFrame(rows[1:], columns=header, dtype=object)
    if suffix == ".json":
        try:
            items = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as error:
            raise _fail(path, f"is not valid JSON ({error.msg} at line {error.lineno})", "fix the JSON syntax") from None
        if not isinstance(items, list):
            raise _fail(path, "holds a JSON object, not a list", 'write a list: ["prompt one", ...]')
        return pd.DataFrame(_records_from_json_items(path, items, "entry"), dtype=object)
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise _fail(path, f"line {line_number} is not valid JSON ({error.msg})", "write one JSON value per line") from None
        records.extend(_records_from_json_items(path, [item], f"line {line_number}, entry"))
    return pd.DataFrame(records, dtype=object)


def _heldout_by_hash(prompt: str, fraction: float) -> bool:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _refuse_conflicting_duplicates(table: pd.DataFrame, path: Path) -> None:
    """A prompt given twice (after whitespace normalisation) must not carry two splits or categories:
    dropping one copy would silently move it, e.g. leak a held-out prompt into training."""
    for column in ("split", "category"):
        if column not in table:
            continue
        values = table[column].map(lambda v: str(v).strip().lower() if isinstance(v, str) and v.strip() else None)
        conflicting = values.groupby(table["prompt"]).nunique(dropna=False)
        conflicting = conflicting[conflicting > 1]
        if len(conflicting):
            prompt = conflicting.index[0]
            rows = [int(i) + 1 for i in table.index[table["prompt"] == prompt]]
            raise _fail(
                path, f"prompt {prompt!r} appears {len(rows)} times (prompts {rows}, after whitespace "
                f"normalisation) with different {column} values {sorted(map(str, values[table['prompt'] == prompt]))}",
                f"keep one copy of the prompt, with the {column} it should have",
            )


def load_prompt_table(config: PromptsConfig, root: str | Path = ".") -> tuple[pd.DataFrame, dict]:
    """Read, normalise and validate the prompt file of ``config``.

    Returns the table (columns ``prompt``, ``category``, ``split`` and any extra columns of the file,
    in file order, exact duplicates dropped) and a summary dictionary.
    """
    path = Path(config.path)
    if not path.is_absolute():
        path = Path(root) / path
    table = read_prompt_file(path)
    table["prompt"] = [re.sub(r"\s+", " ", str(p)).strip() for p in table["prompt"]]
    table = table[table["prompt"] != ""].reset_index(drop=True)
    if table.empty:
        raise _fail(path, "contains no prompts (empty or only blank lines)", "add at least one prompt")
    too_long = table.index[table["prompt"].str.len() > config.max_chars]
    if len(too_long):
        first = int(too_long[0])
        raise _fail(
            path,
            f"prompt {first + 1} has {len(table['prompt'][first])} characters, over prompts.max_chars="
            f"{config.max_chars}",
            "shorten the prompt or raise prompts.max_chars",
        )
    _refuse_conflicting_duplicates(table, path)
    n_before = len(table)
    table = table.drop_duplicates(subset=["prompt"], keep="first").reset_index(drop=True)
    n_duplicates = n_before - len(table)
    if n_duplicates:
        logger.info("Dropped %d duplicate prompt(s) from %s", n_duplicates, path)

    if "category" not in table:
        table["category"] = DEFAULT_CATEGORY
    table["category"] = [
        str(c).strip() if isinstance(c, str) and c.strip() else DEFAULT_CATEGORY for c in table["category"]
    ]
    given = table["split"] if "split" in table else pd.Series([None] * len(table), dtype=object)
    given = [s.strip().lower() if isinstance(s, str) and s.strip() else None for s in given]
    unknown = sorted({s for s in given if s is not None and s not in SPLITS})
    if unknown:
        raise _fail(path, f"has unknown split value(s) {unknown}", f"use only {list(SPLITS)}")
    n_hashed = sum(s is None for s in given)
    table["split"] = [
        s if s is not None else ("heldout" if _heldout_by_hash(p, config.heldout_fraction) else "train")
        for s, p in zip(given, table["prompt"])
    ]
    split_source = (
        "file" if n_hashed == 0 else f"{n_hashed} by hash of prompt text (heldout_fraction={config.heldout_fraction})"
    )
    if not (table["split"] == "train").any():
        raise _fail(path, "has no prompt in the 'train' split", "mark at least one prompt split=train")

    ordered = ["prompt", "category", "split"]
    table = table[ordered + [c for c in table.columns if c not in ordered]]
    summary = summarise_prompts(table)
    summary.update({"source": str(config.path), "duplicates_dropped": int(n_duplicates), "split_source": split_source})
    return table, summary


def summarise_prompts(table: pd.DataFrame) -> dict[str, Any]:
    """Counts per split and per category, and prompt lengths, for the reporting folder."""
    lengths = table["prompt"].str.len()
    return {
        "n_prompts": int(len(table)),
        "per_split": {k: int(v) for k, v in table["split"].value_counts().sort_index().items()},
        "per_category": {k: int(v) for k, v in table["category"].value_counts().sort_index().items()},
        "chars": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
    }
