"""A random-weight Stable Diffusion pipeline built from code, as diffusers' own fast tests build
theirs: the tiny model's parts (``workers.tiny.training.build_components``) at their smallest,
two UNet levels of one layer each with cross-attention on the second. For plumbing tests (a
conversion's layout, its op counts, a recipe applied by layer name, a variant's bookkeeping)
that need a pipeline's shape, not its training; the trained tiny stays where a test measures
what an image shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workers.tiny.training import TrainConfig, assemble, build_components

# The tiny model's VAE (x4: a 16x16 latent of 64 px) and text encoder; its UNet cut to two levels.
# Attention at 64 channels keeps linear layers above the uniform recipe's 2048-element threshold.
DUMMY = TrainConfig(
    vae_channels=(32, 32, 64),
    unet_channels=(32, 64),
    unet_attention=(False, True),
    unet_layers=1,
)


def dummy_pipe(tokenizer_dir: Path) -> Any:
    """The dummy pipeline in fp32, eval mode (its tokenizer written to ``tokenizer_dir``)."""
    parts = build_components(DUMMY, tokenizer_dir)
    for name in ("unet", "vae", "text_encoder"):
        parts[name].eval()
    return assemble(parts, zero_terminal_snr=True)


def resnet_count(unet: Any) -> int:
    """ResNet blocks of a diffusers UNet, from its config: ``layers_per_block`` in each down
    block, two in the mid block, one more than that in each up block."""
    layers = unet.config.layers_per_block
    levels = len(unet.config.block_out_channels)
    per_level = [layers] * levels if isinstance(layers, int) else list(layers)
    return sum(per_level) + 2 + sum(n + 1 for n in per_level)
