from kedro.pipeline import Node, Pipeline

from dpok.pipelines.select_prompts.nodes import measure_candidates, select_prompts, select_training_pool


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                measure_candidates,
                ["base_model", "params:select_prompts", "params:pretrained_samples", "params:sampler"],
                "headroom_candidate_scores",
                name="measure_candidates_node",
            ),
            Node(
                select_prompts,
                ["headroom_candidate_scores", "params:select_prompts"],
                ["headroom_prompts", "headroom_candidate_rates", "headroom_summary"],
                name="select_prompts_node",
            ),
            Node(
                select_training_pool,
                ["headroom_candidate_rates", "shapeseval_prompts", "params:select_prompts"],
                "shapeseval_training_prompts",
                name="select_training_pool_node",
            ),
        ]
    )
