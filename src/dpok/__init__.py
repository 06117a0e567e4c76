"""dpok: DPOK (Fan et al., NeurIPS 2023) online RL fine-tuning of text-to-image diffusion models."""

__version__ = "0.1.0"
