from kedro.pipeline import Node, Pipeline

from dpok.pipelines.prompts.nodes import ingest_prompts


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                ingest_prompts,
                inputs="params:prompts",
                outputs=["prompts", "prompts_summary"],
                name="ingest_prompts_node",
            )
        ]
    )
