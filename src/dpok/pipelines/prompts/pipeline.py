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


def prompts_in_memory(namespace: str) -> Pipeline:
    """The same ingestion for another pipeline that needs the prompt table, kept in memory.

    ``kedro run --pipelines finetune`` must work by itself on a fresh clone, so each pipeline ingests
    the prompt file it needs; writing to ``<namespace>_prompts`` (not in the catalog) keeps the
    ``prompts`` pipeline the only writer of ``prompts.parquet``, so no two DVC stages share an output.
    The table is ``<namespace>_prompts``.
    """
    return Pipeline(
        create_pipeline(),
        namespace=namespace,
        parameters={"params:prompts": "params:prompts"},
        outputs={"prompts": f"{namespace}_prompts", "prompts_summary": f"{namespace}_prompts_summary"},
    )
