"""Models: load a diffusers pipeline, build SD-shaped components, local tokenizers, LoRA in diffusers format."""

from dpok.models.architectures import (
    assemble_pipeline,
    build_autoencoder,
    build_ddim_scheduler,
    build_text_encoder,
    build_tiny_pipeline,
    build_unet,
)
from dpok.models.loading import ModelSourceError, load_pipeline, resolve_model_source
from dpok.models.lora import (
    ADAPTER_NAME,
    LORA_WEIGHT_NAME,
    attach_lora,
    load_lora,
    load_lora_state_dict,
    lora_state_dict,
    save_lora,
)
from dpok.models.tokenizer import UnknownWordError, build_word_tokenizer, check_prompt_words, vocabulary_words

__all__ = [
    "ADAPTER_NAME",
    "LORA_WEIGHT_NAME",
    "ModelSourceError",
    "UnknownWordError",
    "assemble_pipeline",
    "attach_lora",
    "build_autoencoder",
    "build_ddim_scheduler",
    "build_text_encoder",
    "build_tiny_pipeline",
    "build_unet",
    "build_word_tokenizer",
    "check_prompt_words",
    "load_lora",
    "load_lora_state_dict",
    "load_pipeline",
    "lora_state_dict",
    "resolve_model_source",
    "save_lora",
    "vocabulary_words",
]
