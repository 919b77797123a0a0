"""The built-in tiny flow-matching models (``model = tiny-sd3``, ``tiny-flux``, ``tiny-flux2``,
``tiny-zimage``), so the Stable Diffusion 3, FLUX.1, FLUX.2 [klein] and Z-Image paths run and are
tested with no download.

Built from code as the tiny SDXL is (``workers.tiny.xl``), the way diffusers' own fast tests
build theirs: the real diffusers/transformers classes at toy size, with the parts that make
each family what it is:

* ``tiny-sd3`` (``StableDiffusion3Pipeline``): an MMDiT (``SD3Transformer2DModel``, 2x2
  patches, RMS-normed queries and keys and one dual-attention layer as in SD 3.5), two CLIP
  encoders with projections (their penultimate hidden states side by side, zero-padded to the
  T5 width, are the context before T5's; their projected embeddings, concatenated, the pooled
  one) and a T5 encoder; a 16-channel VAE with SD3's scaling and shift; SD 3.5's
  ``FlowMatchEulerDiscreteScheduler(shift=3.0)``.
* ``tiny-flux`` (``FluxPipeline``), FLUX.1 [dev]'s layout: a ``FluxTransformer2DModel`` with
  guidance embedding (``guidance_embeds=True``: ``guidance_scale`` is an input of the model,
  one pass a step; true CFG only with ``true_cfg_scale > 1`` and a negative prompt), the CLIP
  encoder's pooled output and T5's hidden states; a 16-channel VAE whose latents are packed in
  2x2 patches (64 channels a token); FLUX.1 [dev]'s scheduler, shifted by image size.
* ``tiny-flux2`` (``Flux2KleinPipeline``), FLUX.2 [klein]'s layout, undistilled
  (``is_distilled=False``: ``guidance_scale > 1`` runs true CFG against the empty prompt): a
  ``Flux2Transformer2DModel`` without guidance embedding, a ``Qwen3ForCausalLM`` whose hidden
  states at ``FLUX2_TEXT_LAYERS``, side by side, are the context (Klein 4B takes layers 9, 18
  and 27 of 36; here 1, 2 and 3 of 4, which the caller must pass as ``text_encoder_out_layers``:
  the pipeline's default would index layers this model does not have), Qwen's chat template;
  an ``AutoencoderKLFlux2`` (2x2 patches, batch-normed latents); Klein's scheduler (FLUX.1
  [dev]'s config, with Klein's own shift from image size and step count).
* ``tiny-zimage`` (``ZImagePipeline``), Z-Image's layout: a single-stream
  ``ZImageTransformer2DModel`` (2x2 patches, noise and caption refiner blocks, then the joint
  blocks over [image, caption]; 3-axis RoPE), a ``Qwen3Model`` whose second-to-last hidden
  states (layer ``QWEN_LAYERS - 1``) are the caption (``cap_feat_dim`` = its width), Qwen's chat
  template with thinking on; FLUX.1's 16-channel VAE scaling and shift; Z-Image-Turbo's
  scheduler (``FlowMatchEulerDiscreteScheduler(shift=3.0)``, static). Its guidance is
  classifier-free, the prompt and negative stacked in one transformer call.

All draw 64x64 images natively (VAEs with three downsamplings: 8x8 latents). The T5 and Qwen
tokenizers are written by ``workers.tiny.tokenizers``, the CLIP ones are the byte-level
vocabulary of ``workers.tiny``. Pass ``max_sequence_length=T5_MAX_LENGTH`` (the pipelines'
defaults, 256 or 512 tokens, work but cost more) and ``height=width=64`` to FLUX, Klein and
Z-Image (their default is 1024 px whatever the model). ``T5_MAX_LENGTH`` is also the T5 and Qwen
tokenizers' ``model_max_length``.

Weights are random, drawn from a fixed seed per model (the same torch builds the same bytes):
they draw noise, not pictures, but the same noise for the same job. Each is saved with
``save_pretrained`` into the cache once, under a versioned name, and loaded with
``from_pretrained`` as a user's model folder is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workers.cache import default_cache_dir
from workers.tiny import build_once, clip_text_config, write_clip_vocabulary
from workers.tiny.tokenizers import (
    MODEL_MAX_LENGTH,
    check_tokenizer_size,
    write_qwen_tokenizer,
    write_t5_tokenizer,
)

TINY_SD3_MODEL_NAME = "tiny-sd3"
TINY_FLUX_MODEL_NAME = "tiny-flux"
TINY_FLUX2_MODEL_NAME = "tiny-flux2"
TINY_ZIMAGE_MODEL_NAME = "tiny-zimage"
# name -> family name
FLOW_MODELS: dict[str, str] = {
    TINY_SD3_MODEL_NAME: "tiny-sd3",
    TINY_FLUX_MODEL_NAME: "tiny-flux",
    TINY_FLUX2_MODEL_NAME: "tiny-flux2",
    TINY_ZIMAGE_MODEL_NAME: "tiny-zimage",
}
# Bump a model's version when its architecture, weights or tokenizers change, so old caches
# are not reused.
TINY_FLOW_MODEL_VERSIONS: dict[str, str] = {
    TINY_SD3_MODEL_NAME: "tiny-sd3-v1",
    TINY_FLUX_MODEL_NAME: "tiny-flux-v1",
    TINY_FLUX2_MODEL_NAME: "tiny-flux2-v1",
    TINY_ZIMAGE_MODEL_NAME: "tiny-zimage-v1",
}
TINY_FLOW_WEIGHT_SEEDS: dict[str, int] = {
    TINY_SD3_MODEL_NAME: 20260301,
    TINY_FLUX_MODEL_NAME: 20260302,
    TINY_FLUX2_MODEL_NAME: 20260303,
    TINY_ZIMAGE_MODEL_NAME: 20260304,
}

# The max_sequence_length to pass to the pipelines: T5's tokens (tiny-sd3, tiny-flux) or the
# chat-templated prompt's Qwen tokens (tiny-flux2, tiny-zimage). A prompt of the tiny world fits.
# Also the T5 and Qwen tokenizers' model_max_length.
T5_MAX_LENGTH = MODEL_MAX_LENGTH
# The Qwen3 hidden states tiny-flux2's transformer reads (0 is the embeddings; 4, the last,
# is after the final norm, which Klein never takes): pass as text_encoder_out_layers.
QWEN_LAYERS = 4
FLUX2_TEXT_LAYERS: tuple[int, ...] = (1, 2, 3)

# Each model's tokenizer folders, by kind.
TOKENIZERS: dict[str, dict[str, tuple[str, ...]]] = {
    TINY_SD3_MODEL_NAME: {"clip": ("tokenizer", "tokenizer_2"), "t5": ("tokenizer_3",)},
    TINY_FLUX_MODEL_NAME: {"clip": ("tokenizer",), "t5": ("tokenizer_2",)},
    TINY_FLUX2_MODEL_NAME: {"qwen": ("tokenizer",)},
    TINY_ZIMAGE_MODEL_NAME: {"qwen": ("tokenizer",)},
}

IMAGE_SIZE = 64  # native: 8x8 latents
LATENT_SIZE = 8
CLIP_WIDTH = 32  # each CLIP encoder's hidden size and projection
T5_WIDTH = 64  # T5's d_model: the MMDiTs' joint_attention_dim
QWEN_WIDTH = 16  # Qwen3's hidden size; Klein's context is len(FLUX2_TEXT_LAYERS) of it
ZIMAGE_WIDTH = 32  # the Z-Image transformer's width (2 heads of 16)


def tiny_flow_model_path(name: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "models" / _version(name)


def _version(name: str) -> str:
    try:
        return TINY_FLOW_MODEL_VERSIONS[name]
    except KeyError:
        known = ", ".join(FLOW_MODELS)
        raise ValueError(f"{name!r} is not a built-in flow-matching model ({known})") from None


def build_tiny_flow_model(name: str, destination: Path) -> None:
    """Build a tiny flow-matching model's components from code and save them as a diffusers
    folder."""
    builders = {
        TINY_SD3_MODEL_NAME: _build_sd3,
        TINY_FLUX_MODEL_NAME: _build_flux,
        TINY_FLUX2_MODEL_NAME: _build_flux2,
        TINY_ZIMAGE_MODEL_NAME: _build_zimage,
    }
    _version(name)
    import torch

    destination.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(TINY_FLOW_WEIGHT_SEEDS[name])
    pipe = builders[name](destination)
    pipe.save_pretrained(destination, safe_serialization=True)
    # save_pretrained writes the CLIP tokenizers' tokenizer.json only: keep the plain files.
    # It rewrites the T5 and Qwen ones its own way (transformers 5 adds keys such as
    # "is_local", moves the chat template to a file of its own): keep the files written here.
    for sub in TOKENIZERS[name].get("clip", ()):
        write_clip_vocabulary(destination / sub)
    for sub in TOKENIZERS[name].get("t5", ()):
        write_t5_tokenizer(destination / sub)
    for sub in TOKENIZERS[name].get("qwen", ()):
        (destination / sub / "chat_template.jinja").unlink(missing_ok=True)
        write_qwen_tokenizer(destination / sub)


def ensure_tiny_flow_model(name: str, cache_dir: Path | None = None) -> Path:
    """Return a tiny flow-matching model's folder, building it once (atomically, safe across
    processes)."""
    path = tiny_flow_model_path(name, cache_dir)
    return build_once(path, lambda folder: build_tiny_flow_model(name, folder), f"the tiny {name}")


def _clip_tokenizer(folder: Path, what: str) -> Any:
    from transformers import CLIPTokenizer

    vocab_size = write_clip_vocabulary(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    check_tokenizer_size(tokenizer, vocab_size, what)
    return tokenizer


def _t5(folder: Path, what: str) -> tuple[Any, Any]:
    """A T5 v1.1-style encoder (gated GELU, relative attention) and its tokenizer."""
    from transformers import T5EncoderModel, T5TokenizerFast

    vocab_size = write_t5_tokenizer(folder)
    tokenizer = T5TokenizerFast.from_pretrained(folder)
    check_tokenizer_size(tokenizer, vocab_size, what)
    return T5EncoderModel(t5_config(vocab_size, T5_WIDTH, d_ff=64)), tokenizer


def t5_config(vocab_size: int, width: int, d_ff: int) -> Any:
    """The built-in models' T5 v1.1-style encoder: two layers, heads of 16, gated GELU,
    relative attention over 8 buckets (``tiny-flow`` and the flow toys)."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=16,
        d_ff=d_ff,
        num_layers=2,
        num_heads=width // 16,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _vae(latent_channels: int, scaling_factor: float, shift_factor: float) -> Any:
    """Four blocks, three downsamplings (an image is 8x its latent), no quant convs, as the
    SD3 and FLUX.1 VAEs."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def _flux_dev_scheduler() -> Any:
    """FLUX.1 [dev]'s scheduler config (FLUX.2 [klein] ships the same)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _build_sd3(destination: Path) -> Any:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    tokenizer = _clip_tokenizer(destination / "tokenizer", "tiny-sd3 tokenizer")
    tokenizer_2 = _clip_tokenizer(destination / "tokenizer_2", "tiny-sd3 tokenizer_2")
    text_encoder = CLIPTextModelWithProjection(clip_text_config(len(tokenizer), CLIP_WIDTH))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(len(tokenizer_2), CLIP_WIDTH))
    text_encoder_3, tokenizer_3 = _t5(destination / "tokenizer_3", "tiny-sd3 tokenizer_3")
    transformer = SD3Transformer2DModel(
        sample_size=LATENT_SIZE,  # the pipeline's default size: 8 * 8 = 64 px
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=32,  # = heads * head dim
        pooled_projection_dim=2 * CLIP_WIDTH,
        pos_embed_max_size=16,  # up to 16x16 patches: 256 px
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    # SD3's latent scaling and shift.
    vae = _vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609)
    # SD 3.5's scheduler config.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _build_flux(destination: Path) -> Any:
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer = _clip_tokenizer(destination / "tokenizer", "tiny-flux tokenizer")
    text_encoder = CLIPTextModel(clip_text_config(len(tokenizer), CLIP_WIDTH))
    text_encoder_2, tokenizer_2 = _t5(destination / "tokenizer_2", "tiny-flux tokenizer_2")
    latent_channels = 16
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # 2x2 packed latents
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=CLIP_WIDTH,  # CLIPTextModel's pooled output
        guidance_embeds=True,  # FLUX.1 [dev]
        axes_dims_rope=(4, 4, 8),  # sums to the head dim
    )
    # FLUX.1's latent scaling and shift.
    vae = _vae(latent_channels=latent_channels, scaling_factor=0.3611, shift_factor=0.1159)
    return FluxPipeline(
        scheduler=_flux_dev_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _qwen(destination: Path, what: str) -> tuple[Any, Any]:
    """The Qwen tokenizer written into ``destination / "tokenizer"``, and Qwen3 4B's config at
    toy size (grouped-query attention, tied embeddings) for it."""
    from transformers import Qwen2TokenizerFast, Qwen3Config

    folder = destination / "tokenizer"
    vocab_size = write_qwen_tokenizer(folder)
    tokenizer = Qwen2TokenizerFast.from_pretrained(folder)
    check_tokenizer_size(tokenizer, vocab_size, what)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=QWEN_WIDTH,
        intermediate_size=32,
        num_hidden_layers=QWEN_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=512,  # the pipelines' default max_sequence_length
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    return tokenizer, config


def _build_flux2(destination: Path) -> Any:
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3ForCausalLM

    tokenizer, qwen_config = _qwen(destination, "tiny-flux2 tokenizer")
    text_encoder = Qwen3ForCausalLM(qwen_config)
    latent_channels = 8
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # 2x2 patchified latents
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=len(FLUX2_TEXT_LAYERS) * QWEN_WIDTH,
        timestep_guidance_channels=256,
        mlp_ratio=3.0,
        axes_dims_rope=(4, 4, 4, 4),  # sums to the head dim
        rope_theta=2000,
        eps=1e-6,
        guidance_embeds=False,  # Klein
    )
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )
    return Flux2KleinPipeline(
        scheduler=_flux_dev_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=False,
    )


def _build_zimage(destination: Path) -> Any:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    tokenizer, qwen_config = _qwen(destination, "tiny-zimage tokenizer")
    # Z-Image ships the bare Qwen3 (no LM head) and reads its second-to-last hidden states.
    text_encoder = Qwen3Model(qwen_config)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=ZIMAGE_WIDTH,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=QWEN_WIDTH,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],  # sums to the head dim
        axes_lens=[512, 64, 64],  # caption positions; up to 64x64 patches (1024 px)
    )
    # The pad tokens (what fills each row's image and caption out to a multiple of 32 tokens)
    # are zeros or torch.empty as built, depending on the diffusers version: drawn here.
    with torch.no_grad():
        transformer.x_pad_token.copy_(torch.randn_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.randn_like(transformer.cap_pad_token))
    # Z-Image uses FLUX.1's VAE: its latent scaling and shift.
    vae = _vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159)
    # Z-Image-Turbo's scheduler config: a static shift of 3.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    return ZImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
