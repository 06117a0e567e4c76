from kedro.pipeline import Node, Pipeline

from dpok.pipelines.finetune.nodes import (
    finetune,
    plot_learning_curves,
    plot_probe_curve,
    plot_training_rewards,
    validate_finetune_params,
)
from dpok.pipelines.prompts.pipeline import prompts_in_memory


def create_pipeline(**kwargs) -> Pipeline:
    return prompts_in_memory("finetune") + Pipeline(
        [
            Node(
                validate_finetune_params,
                ["params:finetune", "params:sampler", "finetune_prompts", "shapeseval_prompts"],
                ["finetune_config", "finetune_train_prompts", "finetune_probe_prompts"],
                name="validate_finetune_params_node",
            ),
            Node(
                finetune,
                ["base_model", "finetune_config", "finetune_train_prompts", "finetune_probe_prompts"],
                ["lora", "finetune_history", "finetune_rewards", "finetune_value_by_step", "finetune_probe"],
                name="finetune_node",
            ),
            Node(
                plot_learning_curves,
                ["finetune_history", "finetune_value_by_step"],
                "finetune_curves",
                name="plot_learning_curves_node",
            ),
            Node(
                plot_training_rewards,
                ["finetune_rewards", "finetune_config"],
                "finetune_reward_curves",
                name="plot_training_rewards_node",
            ),
            Node(
                plot_probe_curve,
                ["finetune_probe", "finetune_rewards", "finetune_config"],
                "finetune_probe_curve",
                name="plot_probe_curve_node",
            ),
        ]
    )
