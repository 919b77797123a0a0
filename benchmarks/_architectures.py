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


# -- whole flow-matching pipelines, random weights, built on a device ---------------------------
# The GPU rows of benchmarks/throughput.py: each published model's transformer (the configs
# above), its text encoders and VAE at their real sizes, built straight on the device in the
# dtype it runs in (no host copy, no fp32 pass: FLUX.1's 12B transformer and T5-XXL are 34 GB
# in bf16). Tokenizers come from the built-in tiny flow models (their ids are all below the
# real vocabularies, which the encoders are built with), told to hold the family's usual text
# length. ``toy=True`` builds the same pipelines, same code, at toy widths and depths: what
# ``--gpu-smoke`` runs on a CPU.

CLIP_VOCAB = 49408
T5_VOCAB = 32128
QWEN3_VOCAB = 151936


def _building(device: Any, dtype: Any) -> Any:
    """A context in which modules are built on ``device`` in ``dtype``, from seed 0."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def context() -> Any:
        previous = torch.get_default_dtype()
        torch.manual_seed(0)
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                yield
        finally:
            torch.set_default_dtype(previous)

    return context()


def _flow_tokenizer(model: str, sub: str, length: int | None = None) -> Any:
    """A tokenizer of a built-in tiny flow model; ``length``: the text length it holds."""
    from transformers import AutoTokenizer

    from workers.tiny.flow import ensure_tiny_flow_model

    options = {} if length is None else {"model_max_length": length}
    return AutoTokenizer.from_pretrained(ensure_tiny_flow_model(model) / sub, **options)


def _clip_encoder(
    tokenizer: Any,
    *,
    vocab: int,
    hidden: int,
    layers: int,
    heads: int,
    act: str,
    projection: bool,
) -> Any:
    """CLIP's text encoder (ViT-L/14's, or OpenCLIP bigG's) reading ``tokenizer``'s ids."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=max(vocab, len(tokenizer)),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # where the pooled embedding is taken
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5_encoder(tokenizer: Any, *, toy: bool) -> Any:
    """T5 v1.1 XXL's encoder (4.76B parameters), or a toy of it 256 wide."""
    from transformers import T5Config, T5EncoderModel

    size = (
        {"d_model": 256, "d_kv": 64, "d_ff": 512, "num_layers": 1, "num_heads": 4}
        if toy
        else {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64}
    )
    config = T5Config(
        vocab_size=len(tokenizer) if toy else max(T5_VOCAB, len(tokenizer)),
        **size,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def _qwen3_encoder(tokenizer: Any, *, toy: bool) -> Any:
    """Qwen3-4B (4.02B parameters: 36 layers 2,560 wide, grouped-query attention, tied
    embeddings), or a toy of it 96 wide with the 28 layers Klein's 9/18/27 need."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    size = (
        {
            "hidden_size": 96,
            "intermediate_size": 192,
            "num_hidden_layers": 28,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 48,
        }
        if toy
        else {
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
        }
    )
    config = Qwen3Config(
        vocab_size=len(tokenizer) if toy else max(QWEN3_VOCAB, len(tokenizer)),
        **size,
        max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3ForCausalLM(config).eval()


def _flow_vae(*, scaling_factor: float, shift_factor: float, toy: bool) -> Any:
    """SD3's and FLUX.1's VAE (16 latent channels, no quant convs), or a toy of it."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64) if toy else (128, 256, 512, 512),
        layers_per_block=1 if toy else 2,
        norm_num_groups=8 if toy else 32,
        latent_channels=16,
        sample_size=1024,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    ).eval()


def _transformer(builder: Any, **overrides: Any) -> Any:
    """The transformer ``builder`` (one of FLOW_TRANSFORMERS) gives, with ``overrides`` to its
    config, built in the current device and dtype."""
    import torch

    with torch.device("meta"):
        published = builder()
    return type(published).from_config(dict(published.config), **overrides).eval()


def sd35_medium_pipeline(*, device: Any = "cpu", dtype: Any = None, toy: bool = False) -> Any:
    """SD 3.5 Medium: its MMDiT (2.24B), CLIP-L and CLIP-G with projections, T5-XXL, the 16-channel
    VAE and its scheduler; T5 text 256 tokens (the pipeline's default)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from workers.backends.flow import MAX_SEQUENCE_LENGTH

    length = MAX_SEQUENCE_LENGTH["StableDiffusion3Pipeline"]
    tokenizer = _flow_tokenizer("tiny-sd3", "tokenizer")
    tokenizer_2 = _flow_tokenizer("tiny-sd3", "tokenizer_2")
    tokenizer_3 = _flow_tokenizer("tiny-sd3", "tokenizer_3", length)
    clip_l = (
        {"hidden": 64, "layers": 2, "heads": 4}
        if toy
        else {"hidden": 768, "layers": 12, "heads": 12}
    )
    clip_g = (
        {"hidden": 64, "layers": 2, "heads": 4}
        if toy
        else {"hidden": 1280, "layers": 32, "heads": 20}
    )
    toy_transformer = {
        "num_layers": 2,
        "num_attention_heads": 2,
        "attention_head_dim": 64,
        "caption_projection_dim": 128,
        "joint_attention_dim": 256,
        "pooled_projection_dim": 128,
        "dual_attention_layers": (0,),
    }
    with _building(device, dtype or torch.bfloat16):
        pipe = StableDiffusion3Pipeline(
            transformer=_transformer(sd35_medium_transformer, **(toy_transformer if toy else {})),
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
            vae=_flow_vae(scaling_factor=1.5305, shift_factor=0.0609, toy=toy),
            text_encoder=_clip_encoder(
                tokenizer, vocab=CLIP_VOCAB, act="quick_gelu", projection=True, **clip_l
            ),
            tokenizer=tokenizer,
            text_encoder_2=_clip_encoder(
                tokenizer_2, vocab=CLIP_VOCAB, act="gelu", projection=True, **clip_g
            ),
            tokenizer_2=tokenizer_2,
            text_encoder_3=_t5_encoder(tokenizer_3, toy=toy),
            tokenizer_3=tokenizer_3,
        )
    return pipe


def flux1_schnell_pipeline(*, device: Any = "cpu", dtype: Any = None, toy: bool = False) -> Any:
    """FLUX.1 [schnell]: FLUX.1's transformer (11.9B) without the guidance embedding, CLIP-L
    (pooled) and T5-XXL, the 16-channel VAE, schnell's unshifted scheduler; T5 text 256
    tokens (what schnell was trained with)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from workers.backends.flow import SCHNELL_SEQUENCE_LENGTH

    tokenizer = _flow_tokenizer("tiny-flux", "tokenizer")
    tokenizer_2 = _flow_tokenizer("tiny-flux", "tokenizer_2", SCHNELL_SEQUENCE_LENGTH)
    clip_l = (
        {"hidden": 64, "layers": 2, "heads": 4}
        if toy
        else {"hidden": 768, "layers": 12, "heads": 12}
    )
    toy_transformer = {
        "num_layers": 1,
        "num_single_layers": 1,
        "num_attention_heads": 2,
        "attention_head_dim": 64,
        "axes_dims_rope": (16, 24, 24),
        "joint_attention_dim": 256,
        "pooled_projection_dim": 64,
    }
    with _building(device, dtype or torch.bfloat16):
        pipe = FluxPipeline(
            transformer=_transformer(
                flux1_transformer, guidance_embeds=False, **(toy_transformer if toy else {})
            ),
            scheduler=FlowMatchEulerDiscreteScheduler(
                num_train_timesteps=1000,
                shift=1.0,
                use_dynamic_shifting=False,
                base_shift=0.5,
                max_shift=1.15,
                base_image_seq_len=256,
                max_image_seq_len=4096,
            ),
            vae=_flow_vae(scaling_factor=0.3611, shift_factor=0.1159, toy=toy),
            text_encoder=_clip_encoder(
                tokenizer, vocab=CLIP_VOCAB, act="quick_gelu", projection=False, **clip_l
            ),
            tokenizer=tokenizer,
            text_encoder_2=_t5_encoder(tokenizer_2, toy=toy),
            tokenizer_2=tokenizer_2,
        )
    return pipe


def klein_4b_pipeline(*, device: Any = "cpu", dtype: Any = None, toy: bool = False) -> Any:
    """FLUX.2 [klein] 4B, step-distilled (``is_distilled``: no guidance): its transformer
    (3.88B), Qwen3-4B (hidden states of layers 9, 18 and 27), the FLUX.2 VAE
    (``AutoencoderKLFlux2``, 32 latent channels) and Klein's scheduler; Qwen text 512 tokens."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
    )

    from workers.backends.flow import MAX_SEQUENCE_LENGTH

    tokenizer = _flow_tokenizer(
        "tiny-flux2", "tokenizer", MAX_SEQUENCE_LENGTH["Flux2KleinPipeline"]
    )
    toy_transformer = {
        "num_layers": 1,
        "num_single_layers": 1,
        "num_attention_heads": 2,
        "attention_head_dim": 64,
        "axes_dims_rope": (16, 16, 16, 16),
        "joint_attention_dim": 3 * 96,
    }
    toy_vae = {"block_out_channels": (32, 32, 64, 64), "layers_per_block": 1, "norm_num_groups": 8}
    with _building(device, dtype or torch.bfloat16):
        pipe = Flux2KleinPipeline(
            transformer=_transformer(klein_4b_transformer, **(toy_transformer if toy else {})),
            scheduler=FlowMatchEulerDiscreteScheduler(
                num_train_timesteps=1000,
                shift=3.0,
                use_dynamic_shifting=True,
                base_shift=0.5,
                max_shift=1.15,
                base_image_seq_len=256,
                max_image_seq_len=4096,
            ),
            vae=AutoencoderKLFlux2(**(toy_vae if toy else {})).eval(),
            text_encoder=_qwen3_encoder(tokenizer, toy=toy),
            tokenizer=tokenizer,
            is_distilled=True,
        )
    return pipe


FLOW_PIPELINES = {
    "SD 3.5 Medium": sd35_medium_pipeline,
    "FLUX.1 [schnell]": flux1_schnell_pipeline,
    "FLUX.2 Klein 4B": klein_4b_pipeline,
}
