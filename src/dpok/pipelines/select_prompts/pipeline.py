from kedro.pipeline import Node, Pipeline

from dpok.pipelines.select_prompts.nodes import measure_candidates, select_prompts


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
        ]
    )
