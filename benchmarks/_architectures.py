"""Stable Diffusion 1.5 and SDXL base architectures with random weights, built in memory (no
download), for benchmarks of speed and size: the shapes decide those, not the weights.

Tokenizers come from the built-in tiny models (a random-weight text encoder reads any token
ids), so prompts run end to end; the text encoders, UNets and VAEs are the real shapes unless
``full=False`` keeps the tiny model's VAE and a two-layer text encoder (cheaper on a CPU, where
the UNet is what is measured).
"""

from __future__ import annotations

from typing import Any


def _clip(vocab: int, hidden: int, layers: int, heads: int, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
        projection_dim=hidden,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _sd_vae(sample_size: int, scaling_factor: float, force_upcast: bool) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def sd15_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )


def sdxl_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def sd15_pipeline(tiny: Any, *, full: bool = False) -> Any:
    """SD 1.5's UNet (and with ``full``, its VAE and 12-layer text encoder), random weights;
    the tiny model's tokenizer (and, without ``full``, its VAE). Epsilon prediction, SD 1.5's
    DPM-Solver++ scheduler config."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    torch.manual_seed(0)
    vocab = len(tiny.tokenizer)
    return StableDiffusionPipeline(
        unet=sd15_unet().eval(),
        vae=_sd_vae(512, 0.18215, False).eval() if full else tiny.vae,
        text_encoder=_clip(vocab, 768, 12 if full else 2, 12).eval(),
        tokenizer=tiny.tokenizer,
        scheduler=DPMSolverMultistepScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            prediction_type="epsilon",
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_pipeline(tiny_xl: Any) -> Any:
    """SDXL base's UNet, VAE and both text encoders (12 and 32 layers), random weights; the
    tiny SDXL's tokenizers and scheduler config."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    torch.manual_seed(0)
    return StableDiffusionXLPipeline(
        vae=_sd_vae(1024, 0.13025, True).eval(),
        text_encoder=_clip(len(tiny_xl.tokenizer), 768, 12, 12).eval(),
        text_encoder_2=_clip(len(tiny_xl.tokenizer_2), 1280, 32, 20, projection=True).eval(),
        tokenizer=tiny_xl.tokenizer,
        tokenizer_2=tiny_xl.tokenizer_2,
        unet=sdxl_unet().eval(),
        scheduler=tiny_xl.scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


# -- the flow-matching transformers at full size (built on the meta device: shapes only) --------
# Configs as the published models' transformer/config.json give them (parameter counts checked:
# SD 3.5 Medium 2.24B, Large 8.06B, FLUX.1 11.9B, FLUX.2 Klein 4B 3.88B).


def sd35_medium_transformer() -> Any:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)),
        qk_norm="rms_norm",
    )


def sd35_large_transformer() -> Any:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=38,
        attention_head_dim=64,
        num_attention_heads=38,
        joint_attention_dim=4096,
        caption_projection_dim=2432,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=192,
        qk_norm="rms_norm",
    )


def flux1_transformer() -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )


def klein_4b_transformer() -> Any:
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        num_layers=5,
        num_single_layers=20,
        num_attention_heads=24,
        attention_head_dim=128,
        joint_attention_dim=7680,  # three Qwen3-4B hidden states of 2,560
        in_channels=128,
        guidance_embeds=False,
    )


FLOW_TRANSFORMERS = {
    "SD 3.5 Medium": sd35_medium_transformer,
    "SD 3.5 Large": sd35_large_transformer,
    "FLUX.1 [dev]/[schnell]": flux1_transformer,
    "FLUX.2 Klein 4B": klein_4b_transformer,
}
