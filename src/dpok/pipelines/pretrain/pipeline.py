from kedro.pipeline import Node, Pipeline

from dpok.pipelines.pretrain.nodes import (
    assemble_base_model,
    plot_pretraining,
    refine_decoder_node,
    render_training_set,
    report_base_model,
    train_autoencoder_node,
    train_denoiser_node,
    validate_pretrain_params,
)
from dpok.pipelines.prompts.pipeline import prompts_in_memory


def create_pipeline(**kwargs) -> Pipeline:
    return prompts_in_memory("pretrain") + Pipeline(
        [
            Node(validate_pretrain_params, "params:pretrain", "pretrain_config", name="validate_pretrain_params_node"),
            Node(render_training_set, "pretrain_config", ["pretrain_images", "pretrain_captions"], name="render_training_set_node"),
            Node(
                train_autoencoder_node,
                ["pretrain_images", "pretrain_config"],
                ["pretrain_autoencoder", "pretrain_latents", "pretrain_autoencoder_log"],
                name="train_autoencoder_node",
            ),
            Node(
                refine_decoder_node,
                ["pretrain_autoencoder", "pretrain_images", "pretrain_config"],
                ["pretrain_autoencoder_refined", "pretrain_decoder_log"],
                name="refine_decoder_node",
            ),
            Node(
                train_denoiser_node,
                ["pretrain_latents", "pretrain_captions", "pretrain_config"],
                ["pretrain_unet", "pretrain_text_encoder", "pretrain_tokenizer", "pretrain_denoiser_log"],
                name="train_denoiser_node",
            ),
            Node(
                assemble_base_model,
                [
                    "pretrain_autoencoder_refined", "pretrain_unet", "pretrain_text_encoder", "pretrain_tokenizer",
                    "pretrain_config",
                ],
                "shapes_base_model_out",
                name="assemble_base_model_node",
            ),
            Node(
                plot_pretraining,
                ["pretrain_autoencoder_log", "pretrain_decoder_log", "pretrain_denoiser_log"],
                ["pretrain_loss_curves", "pretrain_metrics"],
                name="plot_pretraining_node",
            ),
            Node(
                report_base_model,
                ["shapes_base_model_out", "pretrain_prompts", "pretrain_config", "params:pretrain_report", "params:sampler"],
                ["base_model_grid", "base_model_report", "base_model_scores"],
                name="report_base_model_node",
            ),
        ]
    )
