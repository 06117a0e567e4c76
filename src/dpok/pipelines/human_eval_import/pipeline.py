from kedro.pipeline import Node, Pipeline

from dpok.pipelines.human_eval_import.nodes import import_ratings


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                import_ratings,
                ["human_eval_ratings", "human_eval_key", "params:human_eval_import"],
                ["human_eval_results", "human_eval_answers", "human_eval_mlflow_metrics"],
                name="import_ratings_node",
            )
        ]
    )
