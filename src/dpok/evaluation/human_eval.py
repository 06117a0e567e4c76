"""Blinded pairwise human evaluation: export pairs for raters, import and unblind their answers.

Export
------
For each prompt, ``pairs_per_prompt`` seeds are drawn; each (prompt, seed) gives one pair: the base
and the fine-tuned image drawn from the same noise. One seeded ``numpy`` Generator (the seed is
recorded in the key) decides everything random: the seeds, which side the fine-tuned image is shown
on (balanced: half the pairs each way, then shuffled), the order of the pairs, and the opaque names.
The raters' folder holds only:

- ``index.html``: one self-contained page (no network: inline CSS/JS, kept as package data in
  ``human_eval_page/``; images by relative path; a Content-Security-Policy that forbids any request
  other than the page's own images). Per pair it shows the prompt (HTML-escaped) and the two images,
  and asks the paper's two questions; the "Download answers (CSV)" button writes the rater's answers
  client-side.
- ``pairs.csv`` (pair_id, prompt, left_image, right_image) for other annotation tools.
- ``img/<12 hex>.png``: the images, re-encoded without metadata under random names.

Pair ids and image names are random hex strings, the pair order is shuffled, and nothing in the
folder names a model, a seed or a source file: the mapping lives in the key
(``data/08_reporting/human_eval_key.csv``), outside the folder.

Answers CSV (what the page downloads, and what :func:`validate_ratings` accepts)
-------------------------------------------------------------------------------
Columns ``pair_id, rater, q_text, q_quality`` (others are ignored). ``q_text`` answers "Which image
matches the text better?", ``q_quality`` "Which image looks better?". Values: ``left``, ``right``,
``tie`` (case and surrounding spaces are ignored), or empty for a question left unanswered. One row
per rater and pair; a rater may split their answers over several files.

Import
------
Answers are validated (unknown pair id, duplicate (rater, pair) answer, bad value, missing rater → a
:class:`RatingsError` naming the file and line), unblinded with the key (left/right → base /
fine-tuned) and summarised per question, overall, per category and per split: the fine-tuned model's
win rate among decisive answers (ties excluded) with a binomial CI, and the share of ties.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from dpok.evaluation.manifest import partition_id
from dpok.evaluation.stats import binomial_ci

QUESTIONS = {
    "q_text": ("text", "Which image matches the text better?"),
    "q_quality": ("quality", "Which image looks better? (image quality, whatever the text says)"),
}
ANSWERS = ("left", "right", "tie")
RATING_COLUMNS = ("pair_id", "rater", *QUESTIONS)
PUBLIC_COLUMNS = ("pair_id", "prompt", "left_image", "right_image")
KEY_COLUMNS = (
    "pair_id", "prompt", "category", "split", "seed", "left_model", "right_model",
    "left_image", "right_image", "left_source", "right_source", "export_seed",
)
MODELS = ("base", "finetuned")
IMAGE_FOLDER = "img"
_HEX_BYTES = 6


class RatingsError(ValueError):
    """A ratings file that cannot be used; the message names the file, the line and the fix."""


def _unique_hex(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        token = rng.bytes(_HEX_BYTES).hex()
        if token not in used:
            used.add(token)
            return token


def build_pairs(
    base: pd.DataFrame, finetuned: pd.DataFrame, *, pairs_per_prompt: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The public pair table (``PUBLIC_COLUMNS``, in the shuffled order shown to raters) and the key
    (``KEY_COLUMNS``). ``base``/``finetuned`` are the two manifests (prompt, category, split, seed,
    file); ``left_source``/``right_source`` are ``<model>/<file>`` in the models' sample folders."""
    if pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be >= 1, got {pairs_per_prompt}")
    rng = np.random.default_rng(int(seed))
    tuned_files = {(p, int(s)): f for p, s, f in zip(finetuned["prompt"], finetuned["seed"], finetuned["file"])}
    chosen = []
    for prompt, rows in base.groupby("prompt", sort=False):
        rows = rows[[(prompt, int(s)) in tuned_files for s in rows["seed"]]]
        if rows.empty:
            continue
        k = min(pairs_per_prompt, len(rows))
        picks = np.sort(rng.choice(len(rows), size=k, replace=False))
        for record in rows.iloc[picks].to_dict("records"):
            chosen.append({**record, "tuned_file": tuned_files[(prompt, int(record["seed"]))]})
    if not chosen:
        raise ValueError("no (prompt, seed) appears in both manifests: nothing to compare")
    n = len(chosen)
    tuned_left = np.array([True] * (n // 2) + [False] * (n // 2) + ([bool(rng.integers(2))] if n % 2 else []))
    rng.shuffle(tuned_left)
    used: set[str] = set()
    key_rows = []
    for record, left_is_tuned in zip(chosen, tuned_left):
        pair_id = _unique_hex(rng, used)
        images = {model: f"{IMAGE_FOLDER}/{_unique_hex(rng, used)}.png" for model in MODELS}
        sources = {"base": f"base/{record['file']}", "finetuned": f"finetuned/{record['tuned_file']}"}
        left, right = ("finetuned", "base") if left_is_tuned else ("base", "finetuned")
        key_rows.append({
            "pair_id": pair_id, "prompt": record["prompt"], "category": record["category"],
            "split": record["split"], "seed": int(record["seed"]), "left_model": left, "right_model": right,
            "left_image": images[left], "right_image": images[right],
            "left_source": sources[left], "right_source": sources[right], "export_seed": int(seed),
        })
    key = pd.DataFrame(key_rows, columns=list(KEY_COLUMNS))
    key = key.iloc[rng.permutation(len(key))].reset_index(drop=True)
    return key[list(PUBLIC_COLUMNS)].copy(), key


def blinded_images(
    key: pd.DataFrame, loaders: Mapping[str, Mapping[str, Callable[[], Image.Image]]]
) -> dict[str, Callable[[], Image.Image]]:
    """``{partition id under img/: callable}`` for a lazily saving PartitionedDataset.

    ``loaders`` maps a model (``base``/``finetuned``) to its sample folder's partitions (``{partition
    id: load fn}``, as a PartitionedDataset loads). Each image is re-encoded from its pixels, so no PNG
    chunk of the source travels along."""

    def copy(model: str, file: str) -> Callable[[], Image.Image]:
        pid = partition_id(file)
        if pid not in loaders[model]:
            raise KeyError(f"image {file!r} of the {model} samples is missing; rerun its sampling pipeline")

        def load() -> Image.Image:
            return Image.fromarray(np.asarray(loaders[model][pid]().convert("RGB")))

        return load

    result = {}
    for row in key.to_dict("records"):
        for side in ("left", "right"):
            model, file = row[f"{side}_source"].split("/", 1)
            result[partition_id(row[f"{side}_image"]).split("/", 1)[1]] = copy(model, file)
    return result


PAGE_ASSETS = "human_eval_page"
"""Package-data folder (next to this module) with the rater page's ``page.css`` and ``page.js``, inlined
into every page so that it needs no network and no other file."""


@functools.cache
def _page_asset(name: str) -> str:
    return (resources.files(__package__) / PAGE_ASSETS / name).read_text(encoding="utf-8")


def render_page(pairs: pd.DataFrame, *, title: str, export_id: str) -> str:
    """The rater's page for the public pair table. Every prompt and other text is HTML-escaped."""
    esc = html.escape
    blocks = []
    for number, row in enumerate(pairs.to_dict("records"), start=1):
        dom_id = f"pair{number}"
        fieldsets = []
        for column, (_, question) in QUESTIONS.items():
            options = "".join(
                f'<label><input type="radio" name="{dom_id}-{column}" value="{value}"> {label}</label>'
                for value, label in (("left", "Left"), ("tie", "About the same"), ("right", "Right"))
            )
            fieldsets.append(f"<fieldset><legend>{esc(question)}</legend>{options}</fieldset>")
        blocks.append(
            f'<section class="pair" id="{dom_id}" data-pair-id="{esc(str(row["pair_id"]))}">'
            f'<div>Pair {number} of {len(pairs)}</div>'
            f'<p class="prompt">Text: <q class="prompt-text">{esc(str(row["prompt"]))}</q></p>'
            '<div class="images">'
            + "".join(
                f'<figure><img src="{esc(str(row[f"{side}_image"]))}" alt="{side} image">'
                f"<figcaption>{side.capitalize()}</figcaption></figure>"
                for side in ("left", "right")
            )
            + "</div>" + "".join(fieldsets) + "</section>"
        )
    csp = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>\n{_page_asset('page.css')}</style></head>\n"
        f'<body data-export="{esc(export_id)}">'
        f"<header><h1>{esc(title)}</h1>"
        "<p>For each pair, read the text, look at both images and answer the two questions. "
        "Your answers are kept in this browser until you download them; nothing is sent anywhere.</p>"
        '<label>Your name or rater id: <input id="rater" autocomplete="off"></label> '
        '<button id="download" type="button">Download answers (CSV)</button>'
        '<span id="status"></span> <span id="message" role="status"></span></header>\n'
        "<main>\n" + "\n".join(blocks) + "\n</main>\n"
        f"<script>\n{_page_asset('page.js')}</script></body></html>\n"
    )


def _where(source: str, line: int) -> str:
    return f"ratings file '{source}', line {line}"


def validate_ratings(sources: Mapping[str, pd.DataFrame], key: pd.DataFrame) -> pd.DataFrame:
    """All answers of all files, checked against the key.

    Returns columns source, line, pair_id, rater, q_text, q_quality (answers normalised to
    left/right/tie or ""). Raises :class:`RatingsError` naming the file and line of the first problem.
    """
    if not sources:
        raise RatingsError("no ratings files: put the raters' CSV files in the ratings folder")
    known = set(key["pair_id"].astype(str))
    frames = []
    for source in sorted(sources):
        frame = sources[source]
        missing = [c for c in RATING_COLUMNS if c not in frame.columns]
        if missing:
            raise RatingsError(
                f"ratings file '{source}' lacks column(s) {missing}; expected {list(RATING_COLUMNS)} "
                f"(has {list(frame.columns)})"
            )
        frame = frame[list(RATING_COLUMNS)].astype(object).where(frame[list(RATING_COLUMNS)].notna(), "")
        frame = frame.astype(str).apply(lambda column: column.str.strip())
        frame.insert(0, "line", np.arange(len(frame)) + 2)  # line 1 is the header
        frame.insert(0, "source", source)
        frames.append(frame)
    ratings = pd.concat(frames, ignore_index=True)
    for column in QUESTIONS:
        ratings[column] = ratings[column].str.lower()
    seen: dict[tuple[str, str], str] = {}
    for row in ratings.itertuples(index=False):
        where = _where(row.source, row.line)
        if not row.pair_id:
            raise RatingsError(f"{where}: empty pair_id")
        if row.pair_id not in known:
            raise RatingsError(f"{where}: unknown pair_id {row.pair_id!r} (not in the exported key); was it "
                               "edited, or is the file from another export?")
        if not row.rater:
            raise RatingsError(f"{where}: empty rater for pair {row.pair_id!r}; every answer needs a rater id")
        for column in QUESTIONS:
            value = getattr(row, column)
            if value not in ANSWERS and value != "":
                raise RatingsError(
                    f"{where}: {column} = {value!r} is not an answer; use one of {list(ANSWERS)} or leave it empty"
                )
        previous = seen.get((row.rater, row.pair_id))
        if previous is not None:
            raise RatingsError(
                f"{where}: duplicate answer by rater {row.rater!r} for pair {row.pair_id!r} (first at {previous})"
            )
        seen[(row.rater, row.pair_id)] = where
    return ratings


def unblind(ratings: pd.DataFrame, key: pd.DataFrame) -> pd.DataFrame:
    """One row per answered question: pair_id, rater, prompt, category, split, seed, question
    (``text``/``quality``), answer (left/right/tie) and winner (``finetuned``/``base``/``tie``)."""
    merged = ratings.merge(key.astype({"pair_id": str}), on="pair_id", how="left", validate="many_to_one")
    rows = []
    for column, (question, _) in QUESTIONS.items():
        answered = merged[merged[column] != ""]
        winner = np.where(
            answered[column] == "tie", "tie",
            np.where(answered[column] == "left", answered["left_model"], answered["right_model"]),
        )
        rows.append(pd.DataFrame({
            "pair_id": answered["pair_id"], "rater": answered["rater"], "prompt": answered["prompt"],
            "category": answered["category"], "split": answered["split"], "seed": answered["seed"],
            "question": question, "answer": answered[column], "winner": winner,
        }))
    return pd.concat(rows, ignore_index=True)


def _rates(winners: pd.Series, *, confidence: float, method: str) -> dict[str, Any]:
    tuned, base, ties = (int((winners == outcome).sum()) for outcome in ("finetuned", "base", "tie"))
    interval = binomial_ci(tuned, tuned + base, confidence=confidence, method=method)

    def finite(x: float) -> float | None:
        return None if math.isnan(x) else float(x)

    total = tuned + base + ties
    return {
        "n_answers": total, "finetuned_wins": tuned, "base_wins": base, "ties": ties,
        "finetuned_win_rate": finite(interval.estimate),
        "ci_low": finite(interval.low),
        "ci_high": finite(interval.high),
        "tie_rate": ties / total if total else None,
    }


def win_rates(unblinded: pd.DataFrame, *, confidence: float = 0.95, method: str = "wilson") -> dict[str, Any]:
    """Per question: the fine-tuned model's win rate among decisive answers (wins / (wins + losses),
    ties excluded) with a binomial CI, overall, per category and per split."""
    kwargs = dict(confidence=confidence, method=method)
    result: dict[str, Any] = {
        "confidence": confidence, "ci_method": method,
        "win_rate_definition": "finetuned_wins / (finetuned_wins + base_wins); ties reported apart as tie_rate",
        "questions": {},
    }
    for column, (question, text) in QUESTIONS.items():
        answers = unblinded[unblinded["question"] == question]
        result["questions"][question] = {
            "question": text, "column": column,
            "all": _rates(answers["winner"], **kwargs),
            "per_category": {str(c): _rates(g["winner"], **kwargs) for c, g in answers.groupby("category", sort=True)},
            "per_split": {str(s): _rates(g["winner"], **kwargs) for s, g in answers.groupby("split", sort=True)},
        }
    return result
