import pandas as pd
import pytest
from synthetic import paired_manifests

from dpok.evaluation import (
    comparison_metrics,
    markdown_text,
    metrics_table,
    pair_manifests,
    per_prompt_differences,
    render_report,
    select_grid_prompts,
)

XSS = "<img src=x onerror=alert(1)>"


def test_markdown_text_escapes_html_and_markdown():
    assert markdown_text(XSS) == "&lt;img src=x onerror=alert(1)&gt;"
    assert markdown_text("a | b *c* [d](e) & f") == "a \\| b \\*c\\* \\[d\\](e) &amp; f"


def test_metrics_table_has_a_row_per_group_and_score():
    base, tuned = paired_manifests()
    metrics = comparison_metrics(pair_manifests(base, tuned, ["r"]), {"r": "reward"}, n_resamples=100)
    table = metrics_table(metrics)
    # all + 2 splits + (train: a, b) + (heldout: b)
    assert len(table) == 6
    row = table[(table.split == "train") & (table.category == "a")].iloc[0]
    assert row["base_mean"] == pytest.approx(metrics["per_split_category"]["train"]["a"]["r"]["base"]["mean"])
    assert {"difference_ci_low", "finetuned_ci_high", "kind", "n"} <= set(table.columns)


def test_grid_prompts_cover_every_group_first():
    manifest = pd.DataFrame({
        "prompt": ["a1", "a2", "a3", "b1", "c1", "c2"],
        "split": ["train", "train", "train", "train", "heldout", "heldout"],
        "category": ["a", "a", "a", "b", "c", "c"],
    })
    assert select_grid_prompts(manifest, 3) == ["c1", "a1", "b1"]
    assert len(select_grid_prompts(manifest, 100)) == 6


def test_report_embeds_figures_and_escapes_prompts():
    base, tuned = paired_manifests()
    base.loc[base.prompt == "p1", "prompt"] = XSS
    tuned.loc[tuned.prompt == "p1", "prompt"] = XSS
    paired = pair_manifests(base, tuned, ["r"])
    metrics = comparison_metrics(paired, {"r": "reward"}, n_resamples=100)
    timing = {"setup_seconds": 0.1, "sampling_seconds": 9.0, "scoring_seconds": 0.5, "writing_seconds": 0.5,
              "pipeline_wall_seconds": 10.0, "pipeline_outside_sampling_share": 0.1}
    report = render_report(
        metrics, timing=timing, settings={"seed": 0}, prompt_changes=per_prompt_differences(paired, "r"),
        figures={"Grid": "comparison_grid.png"}, human_eval={"n_pairs": 8, "n_prompts": 4},
    )
    assert "![Grid](comparison_grid.png)" in report
    assert "10% outside sampling" in report
    assert XSS not in report and "&lt;img src=x onerror=alert(1)&gt;" in report
    assert "human_eval/index.html" in report
