from kedro.pipeline import Node, Pipeline

from dpok.pipelines.pretrained_samples.nodes import sample_pretrained_images, write_pretrained_manifest
from dpok.pipelines.prompts.pipeline import prompts_in_memory


def create_pipeline(**kwargs) -> Pipeline:
    return prompts_in_memory("pretrained") + Pipeline(
        [
            Node(
                sample_pretrained_images,
                ["base_model", "pretrained_prompts", "params:pretrained_samples", "params:sampler"],
                ["pretrained_samples", "pretrained_sampling_run"],
                name="sample_pretrained_images_node",
            ),
            Node(
                write_pretrained_manifest,
                ["pretrained_samples", "pretrained_sampling_run", "params:pretrained_samples", "params:sampler"],
                ["pretrained_manifest", "pretrained_sampling_summary", "pretrained_mlflow_metrics"],
                name="write_pretrained_manifest_node",
            ),
        ]
    )
