from kedro.pipeline import Node, Pipeline

from dpok.pipelines.evaluate.nodes import (
    compare_scores,
    draw_comparison_grid,
    export_human_eval,
    sample_finetuned_images,
    write_finetuned_manifest,
    write_report,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                sample_finetuned_images,
                ["base_model", "lora", "pretrained_manifest", "pretrained_sampling_summary", "params:pretrained_samples",
                 "params:sampler"],
                ["finetuned_samples", "finetuned_sampling_run"],
                name="sample_finetuned_images_node",
            ),
            Node(
                write_finetuned_manifest,
                ["finetuned_samples", "finetuned_sampling_run", "params:pretrained_samples", "params:sampler"],
                ["finetuned_manifest", "finetuned_sampling_summary", "finetuned_mlflow_metrics"],
                name="write_finetuned_manifest_node",
            ),
            Node(
                compare_scores,
                ["pretrained_manifest", "finetuned_manifest", "params:pretrained_samples", "params:sampler",
                 "params:evaluate"],
                ["evaluation_metrics", "evaluation_mlflow_metrics"],
                name="compare_scores_node",
            ),
            Node(
                draw_comparison_grid,
                [
                    "pretrained_manifest", "finetuned_manifest", "pretrained_samples", "finetuned_samples",
                    "params:evaluate",
                ],
                "comparison_grid",
                name="draw_comparison_grid_node",
            ),
            Node(
                export_human_eval,
                [
                    "pretrained_manifest", "finetuned_manifest", "pretrained_samples", "finetuned_samples",
                    "params:human_eval",
                ],
                ["human_eval_images", "human_eval_page", "human_eval_pairs", "human_eval_key", "human_eval_summary"],
                name="export_human_eval_node",
            ),
            Node(
                write_report,
                [
                    "evaluation_metrics", "pretrained_manifest", "finetuned_manifest", "finetuned_sampling_summary",
                    "human_eval_summary", "comparison_grid", "finetune_curves", "finetune_reward_curves",
                    "params:pretrained_samples", "params:sampler", "params:evaluate",
                ],
                ["evaluation_report", "evaluate_timing", "evaluate_timing_mlflow_metrics"],
                name="write_report_node",
            ),
        ]
    )
