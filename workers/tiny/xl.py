"""The built-in tiny SDXL (``model = tiny-xl``), so the SDXL path runs and is tested with no
download.

Built from code as the first tiny model was: the real diffusers/transformers classes at toy
size, with the parts that make SDXL what it is: two text encoders (a ``CLIPTextModel`` and a
``CLIPTextModelWithProjection`` whose projected ``text_embeds`` are the pooled embedding),
whose penultimate hidden states, concatenated, are the UNet's cross-attention context, and a
UNet with ``addition_embed_type="text_time"`` that adds the pooled embedding and the six
size/crop "time ids" to the timestep embedding. Both tokenizers use the byte-level CLIP
vocabulary of ``workers.tiny``.

Its weights are random, drawn from a fixed seed (the same torch builds the same ones): it
draws noise, not pictures, but the same noise for the same job, which is what tests need.
Saved with ``save_pretrained`` into the cache, once, and loaded with ``from_pretrained`` as a
user's SDXL folder is.
"""

from __future__ import annotations

from pathlib import Path

from workers.cache import default_cache_dir
from workers.tiny import build_once, clip_text_config, write_clip_vocabulary

TINY_XL_MODEL_NAME = "tiny-xl"
# Bump when the architecture or weights change, so old caches are not reused.
TINY_XL_MODEL_VERSION = "tiny-xl-v1"
TINY_XL_WEIGHT_SEED = 20251201

TEXT_WIDTH = 32  # each encoder's hidden size; the UNet's context is both, concatenated
POOLED_WIDTH = 32  # the second encoder's projection: the pooled embedding
TIME_ID_WIDTH = 8  # per time id (original size, crop top-left, target size: 6 numbers)


def tiny_xl_model_path(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "models" / TINY_XL_MODEL_VERSION


def build_tiny_xl_model(destination: Path) -> None:
    """Build the tiny SDXL's components from code and save them as a diffusers folder."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    tokenizers = []
    for name in ("tokenizer", "tokenizer_2"):
        vocab_size = write_clip_vocabulary(destination / name)
        tokenizer = CLIPTokenizer.from_pretrained(destination / name, model_max_length=77)
        # transformers 5 silently builds a 3-token vocabulary when it misses the files.
        if len(tokenizer) != vocab_size:
            raise RuntimeError(f"tiny-xl {name} has {len(tokenizer)} tokens, expected {vocab_size}")
        tokenizers.append(tokenizer)

    torch.manual_seed(TINY_XL_WEIGHT_SEED)
    text_encoder = CLIPTextModel(clip_text_config(vocab_size, TEXT_WIDTH))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(vocab_size, TEXT_WIDTH))
    # SDXL's layout at toy size: attention only in the lower-resolution level, with more
    # transformer layers there, linear projections, per-level head counts.
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_ID_WIDTH,
        projection_class_embeddings_input_dim=6 * TIME_ID_WIDTH + POOLED_WIDTH,
        norm_num_groups=32,
    )
    # Four blocks, three downsamplings: an image is 8x its latent, as in SDXL; SDXL's
    # latent scaling factor.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,
    )
    # SDXL base's scheduler config.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(destination, safe_serialization=True)
    # save_pretrained writes tokenizer.json only; keep the plain files tooling reads.
    for name in ("tokenizer", "tokenizer_2"):
        write_clip_vocabulary(destination / name)


def ensure_tiny_xl_model(cache_dir: Path | None = None) -> Path:
    """Return the tiny SDXL's folder, building it once (atomically, safe across processes)."""
    return build_once(tiny_xl_model_path(cache_dir), build_tiny_xl_model, "the tiny SDXL model")
