from kedro.pipeline import Node, Pipeline

from dpok.pipelines.shapeseval.nodes import (
    check_shapeseval_inputs,
    compare_shapeseval_scores,
    draw_shapeseval_chart,
    score_base_on_shapeseval,
    score_finetuned_on_shapeseval,
    write_shapeseval_report,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                check_shapeseval_inputs,
                ["shapeseval_prompts", "params:shapeseval", "params:sampler", "params:pretrained_samples"],
                "shapeseval_test_prompts",
                name="check_shapeseval_inputs_node",
            ),
            Node(
                score_base_on_shapeseval,
                ["base_model", "shapeseval_test_prompts", "params:shapeseval", "params:sampler"],
                ["shapeseval_base_manifest", "shapeseval_base_timing"],
                name="score_base_on_shapeseval_node",
            ),
            Node(
                score_finetuned_on_shapeseval,
                ["base_model", "lora", "shapeseval_test_prompts", "params:shapeseval", "params:sampler"],
                ["shapeseval_finetuned_manifest", "shapeseval_finetuned_timing"],
                name="score_finetuned_on_shapeseval_node",
            ),
            Node(
                compare_shapeseval_scores,
                ["shapeseval_base_manifest", "shapeseval_finetuned_manifest", "shapeseval_base_timing",
                 "shapeseval_finetuned_timing", "params:shapeseval", "params:sampler"],
                ["shapeseval_metrics", "shapeseval_scores", "shapeseval_mlflow_metrics"],
                name="compare_shapeseval_scores_node",
            ),
            Node(draw_shapeseval_chart, "shapeseval_metrics", "shapeseval_chart", name="draw_shapeseval_chart_node"),
            Node(
                write_shapeseval_report,
                ["shapeseval_metrics", "shapeseval_chart"],
                "shapeseval_report",
                name="write_shapeseval_report_node",
            ),
        ]
    )
