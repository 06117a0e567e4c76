"""The evaluation report: a metrics table, the prompts shown in the comparison grid, and ``report.md``.

The Markdown report links its figures by relative path (they sit next to it in
``data/08_reporting/``), so it renders the same in a repository browser, an editor or an MLflow
artifact view. Prompt text is escaped for both Markdown and HTML (:func:`markdown_text`): a prompt
such as ``<img src=x onerror=alert(1)>`` shows as text.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from dpok.evaluation.figures import image_grid
from dpok.evaluation.manifest import partition_id

# Inline Markdown syntax; "<", ">" and "&" are left to html.escape (a backslash before an entity would show it).
_MARKDOWN_SPECIALS = "\\`*_[]|~"


def markdown_text(text: Any) -> str:
    """``text`` as literal Markdown inline text: Markdown punctuation backslash-escaped first, then
    HTML-escaped (so raw HTML in a prompt never reaches a renderer as markup)."""
    escaped = "".join("\\" + c if c in _MARKDOWN_SPECIALS else c for c in str(text))
    return html.escape(escaped.replace("\n", " "), quote=True)


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """metrics.json as a flat table: one row per (split, category, score) with the mean and CI of
    base, fine-tuned and their difference. ``split``/``category`` are ``all`` for the pooled rows."""
    rows = []

    def add(split: str, category: str, block: Mapping[str, Any]) -> None:
        for score, kind in metrics["scores"].items():
            row = {"split": split, "category": category, "score": score, "kind": kind, "n": block["n"]}
            for model in ("base", "finetuned", "difference"):
                for stat in ("mean", "ci_low", "ci_high"):
                    row[f"{model}_{stat}"] = block[score][model][stat]
            rows.append(row)

    add("all", "all", metrics["all"])
    for split, block in metrics["per_split"].items():
        add(split, "all", block)
        for category, sub in metrics["per_split_category"][split].items():
            add(split, category, sub)
    return pd.DataFrame(rows)


def select_grid_prompts(manifest: pd.DataFrame, max_prompts: int) -> list[str]:
    """Up to ``max_prompts`` prompts for the comparison grid, taken round-robin over (split, category)
    groups so every group shows up before any shows twice; in split, category order."""
    prompts = manifest.drop_duplicates("prompt")[["prompt", "split", "category"]]
    groups = [list(g["prompt"]) for _, g in prompts.groupby(["split", "category"], sort=True)]
    chosen: list[str] = []
    depth = 0
    while len(chosen) < max_prompts and any(depth < len(g) for g in groups):
        for group in groups:
            if depth < len(group) and len(chosen) < max_prompts:
                chosen.append(group[depth])
        depth += 1
    order = {p: i for i, p in enumerate(prompts.sort_values(["split", "category"], kind="stable")["prompt"])}
    return sorted(chosen, key=order.__getitem__)


def comparison_grid(
    base: pd.DataFrame,
    finetuned: pd.DataFrame,
    base_images: Mapping[str, Callable[[], Image.Image]],
    finetuned_images: Mapping[str, Callable[[], Image.Image]],
    *,
    max_prompts: int,
    n_seeds: int,
    scale: int = 3,
) -> Image.Image:
    """Rows: up to ``max_prompts`` prompts (:func:`select_grid_prompts`); columns: the base model's
    first ``n_seeds`` images, then the fine-tuned model's at the same seeds. ``*_images`` are the
    sample folders' partitions (``{partition id: load fn}``); only the shown images are loaded."""
    prompts = select_grid_prompts(base, max_prompts)
    # The fine-tuned files in the base manifest's (prompt, seed) order, so both sides share seeds.
    tuned = base[["prompt", "seed"]].merge(finetuned[["prompt", "seed", "file"]], on=["prompt", "seed"])

    def row(manifest: pd.DataFrame, images: Mapping[str, Callable[[], Image.Image]], prompt: str) -> np.ndarray:
        files = manifest.loc[manifest["prompt"] == prompt, "file"].head(n_seeds)
        return np.stack([np.asarray(images[partition_id(f)]().convert("RGB")) for f in files])

    rows = [np.concatenate([row(base, base_images, p), row(tuned, finetuned_images, p)]) for p in prompts]
    n = len(rows[0]) // 2
    groups = base.drop_duplicates("prompt").set_index("prompt")
    return image_grid(
        rows,
        row_labels=[f"[{groups.at[p, 'split']}/{groups.at[p, 'category']}] {p}" for p in prompts],
        column_labels=[f"base {i + 1}" for i in range(n)] + [f"tuned {i + 1}" for i in range(n)],
        scale=scale,
    )


def _interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _metrics_markdown(table: pd.DataFrame, confidence: float) -> str:
    pct = f"{confidence:.0%}"
    lines = [
        f"| split | category | score | n | base (mean [{pct} CI]) | fine-tuned | difference |",
        "|---|---|---|---:|---|---|---|",
    ]
    for row in table.to_dict("records"):
        cells = [
            markdown_text(row["split"]),
            markdown_text(row["category"]),
            f"{markdown_text(row['score'])} ({row['kind']})",
            str(row["n"]),
        ]
        for model in ("base", "finetuned", "difference"):
            cells.append(_interval(row[f"{model}_mean"], row[f"{model}_ci_low"], row[f"{model}_ci_high"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _prompt_rows(table: pd.DataFrame) -> str:
    lines = ["| prompt | split | category | base | fine-tuned | difference |", "|---|---|---|---:|---:|---:|"]
    for row in table.to_dict("records"):
        lines.append(
            f"| {markdown_text(row['prompt'])} | {markdown_text(row['split'])} | {markdown_text(row['category'])} | "
            f"{row['base']:.3f} | {row['finetuned']:.3f} | {row['difference']:+.3f} |"
        )
    return "\n".join(lines)


def render_report(
    metrics: Mapping[str, Any],
    *,
    timing: Mapping[str, Any],
    settings: Mapping[str, Any],
    prompt_changes: pd.DataFrame | None,
    figures: Mapping[str, str],
    human_eval: Mapping[str, Any] | None = None,
    top_prompts: int = 5,
) -> str:
    """``report.md``: settings, the time split, the metrics table, the figures (``{caption: relative
    path}``), the prompts that gained and lost most on the first reward, and the human-eval export."""
    confidence = float(metrics["confidence"])
    scores = ", ".join(f"`{name}` ({kind})" for name, kind in metrics["scores"].items())
    parts = [
        "# DPOK evaluation: base vs fine-tuned",
        "",
        f"{metrics['n_images']} image pairs over {metrics['n_prompts']} prompts; each pair shares prompt and seed "
        f"(the same initial noise). Scores: {scores}. Intervals are {confidence:.0%} percentile-bootstrap CIs "
        f"({metrics['bootstrap_resamples']} resamples, seeds redrawn within each prompt); the difference is "
        "fine-tuned minus base over the pairs.",
        "",
        "Sampling: " + ", ".join(f"{k} = {v}" for k, v in settings.items()) + ".",
        "",
        "## Time",
        "",
        f"Fine-tuned model: setup (LoRA loading) {timing['setup_seconds']:.1f} s, sampling "
        f"{timing['sampling_seconds']:.1f} s, scoring {timing['scoring_seconds']:.1f} s, "
        f"image writing {timing['writing_seconds']:.1f} s; the evaluate pipeline (from the sampling node's start "
        f"to this report) took {timing['pipeline_wall_seconds']:.1f} s, of which "
        f"**{timing['pipeline_outside_sampling_share']:.0%} outside sampling**.",
        "",
        "## Scores",
        "",
        _metrics_markdown(metrics_table(metrics), confidence),
        "",
    ]
    for caption, path in figures.items():
        parts += [f"## {caption}", "", f"![{markdown_text(caption)}]({path})", ""]
    if prompt_changes is not None and len(prompt_changes) and top_prompts > 0:
        score = next(iter(metrics["scores"]))
        parts += [f"## Prompts that changed most (`{score}`, mean over seeds)", ""]
        if len(prompt_changes) <= 2 * top_prompts:
            parts += ["All prompts, largest gain first:", "", _prompt_rows(prompt_changes), ""]
        else:
            parts += [
                "Largest gains:", "", _prompt_rows(prompt_changes.head(top_prompts)), "",
                "Largest losses:", "", _prompt_rows(prompt_changes.tail(top_prompts).iloc[::-1]), "",
            ]
    if human_eval:
        parts += [
            "## Human evaluation",
            "",
            f"{human_eval['n_pairs']} blinded pairs over {human_eval['n_prompts']} prompts in "
            "[`human_eval/`](human_eval/index.html) (send the folder to raters; the key stays in "
            "`human_eval_key.csv`). Put the returned CSV files in `data/01_raw/human_eval_ratings/` and run "
            "`kedro run --pipelines human_eval_import`.",
            "",
        ]
    return "\n".join(parts)
