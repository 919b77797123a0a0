"""What the diffusers backend does differently for the flow-matching families (SD 3/3.5,
FLUX.1, FLUX.2 Klein, Z-Image): how a prompt is encoded, what else the pipeline is called with,
how many denoiser calls a step takes and how the latents become an image.

Each family's pipeline does these itself when given a prompt; the backend does them here
instead, prompt by prompt and image by image, so that a batch's images are bit-identical to the
lone jobs' on the CPU (``DiffusersBackend.generate_batch``).

Guidance follows ``workers.models.families``: SD3, a Klein that is not step-distilled and
Z-Image run classifier-free guidance (SD3's pipeline stacks the negative and the prompt in one
denoiser batch, Z-Image's the prompt and the negative; Klein's makes two calls); FLUX.1 dev
takes the scale as an input of the model (one call); FLUX.1 schnell and a distilled Klein take
none.

Z-Image's pipeline differs from the others in four ways. It reads its Qwen3 text encoder's
second-to-last hidden states for the prompt inside Qwen's chat template (thinking left on: no
empty ``<think>`` block, unlike Klein), padded to ``max_sequence_length`` and then cut back to
the prompt's own tokens, so its embeddings are a list of tensors of different lengths, one per
prompt; its transformer takes lists too (a latent per row, ``(C, 1, H, W)``, and a caption per
row; the timesteps a tensor) and gives a list back. Its guidance runs with
``guidance_scale > 0`` as ``pos + g * (pos - neg)``: the usual scale ``w`` (``neg + w * (pos -
neg)``) is ``g + 1``, so a job's ``guidance_scale`` goes to it less one (``zimage_guidance``).
And it always passes its scheduler the linear ``sigmas`` (1 down to 1/steps) and a ``mu``
(``workers.models.schedulers.build_flow_scheduler`` lets DPM-Solver++ take them).
"""

from __future__ import annotations

from typing import Any

from contract.job import GenerationRequest
from workers.models import families

# Each family's usual text length (tokens) for its T5 or Qwen encoder, as its pipeline
# defaults it; a tokenizer that holds fewer (the built-in toys') caps it.
MAX_SEQUENCE_LENGTH = {
    families.SD3_PIPELINE: 256,
    families.FLUX_PIPELINE: 512,
    families.FLUX2_KLEIN_PIPELINE: 512,
    families.ZIMAGE_PIPELINE: 512,
}
# FLUX.1 schnell was trained with 256 tokens of T5 text.
SCHNELL_SEQUENCE_LENGTH = 256
# The Qwen3 hidden states FLUX.2 Klein's transformer reads, as its pipeline defaults them.
KLEIN_TEXT_LAYERS = (9, 18, 27)


def long_text_tokenizer(pipe: Any) -> Any:
    """The tokenizer of the family's long-text encoder (T5, or Qwen3 for Klein and Z-Image)."""
    name = type(pipe).__name__
    if name == families.SD3_PIPELINE:
        return pipe.tokenizer_3
    if name == families.FLUX_PIPELINE:
        return pipe.tokenizer_2
    return pipe.tokenizer


def max_sequence_length(pipe: Any, info: families.ModelInfo) -> int:
    """How many tokens of long text a job's prompt gets: the family's usual count, capped by
    what the model's tokenizer holds."""
    usual = MAX_SEQUENCE_LENGTH[info.pipeline]
    if info.pipeline == families.FLUX_PIPELINE and info.guidance == families.NO_GUIDANCE:
        usual = SCHNELL_SEQUENCE_LENGTH
    tokenizer = long_text_tokenizer(pipe)
    held = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    return min(usual, int(held)) if isinstance(held, int) and held > 0 else usual


def klein_text_layers(info: families.ModelInfo) -> tuple[int, ...]:
    """The Qwen3 layers whose hidden states a Klein transformer reads."""
    if info.family.name == "tiny-flux2":
        from workers.tiny.flow import FLUX2_TEXT_LAYERS

        return tuple(FLUX2_TEXT_LAYERS)
    return KLEIN_TEXT_LAYERS


# What each family's text encoders are called in a truncation note, by tokenizer attribute.
_TEXT_ENCODERS = {
    families.SD_PIPELINE: (("tokenizer", "CLIP"),),
    families.SDXL_PIPELINE: (("tokenizer", "CLIP-L"), ("tokenizer_2", "CLIP-G")),
    families.SD3_PIPELINE: (
        ("tokenizer", "CLIP-L"),
        ("tokenizer_2", "CLIP-G"),
        ("tokenizer_3", "T5"),
    ),
    families.FLUX_PIPELINE: (("tokenizer", "CLIP-L"), ("tokenizer_2", "T5")),
    families.FLUX2_KLEIN_PIPELINE: (("tokenizer", "Qwen3"),),
    families.ZIMAGE_PIPELINE: (("tokenizer", "Qwen3"),),
}
# Whether each Qwen3 family's pipeline renders its chat template with Qwen3's thinking on (no
# empty <think></think> block after the assistant's turn opens) or off.
_CHAT_THINKING = {families.FLUX2_KLEIN_PIPELINE: False, families.ZIMAGE_PIPELINE: True}
CLIP_LENGTH = 77


def truncation(
    pipe: Any, info: families.ModelInfo, prompt: str, length: int | None
) -> dict[str, list[int]]:
    """The text encoders that see only the start of ``prompt``: name -> [its tokens, tokens
    kept] (CLIP keeps 77, start and end marks included; T5 and Qwen3 the job's
    ``length``). Klein's and Z-Image's Qwen3 read the prompt inside its chat template, counted
    too."""
    cut: dict[str, list[int]] = {}
    for attribute, name in _TEXT_ENCODERS.get(info.pipeline, ()):
        tokenizer = getattr(pipe, attribute, None)
        if tokenizer is None:
            continue
        text = prompt
        if info.pipeline in _CHAT_THINKING:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=_CHAT_THINKING[info.pipeline],
            )
        if name.startswith("CLIP"):  # 77, or fewer where the tokenizer holds fewer (tiny-flow)
            held = getattr(tokenizer, "model_max_length", CLIP_LENGTH)
            limit = min(CLIP_LENGTH, held) if isinstance(held, int) and held > 0 else CLIP_LENGTH
        else:
            limit = int(length or CLIP_LENGTH)
        tokens = len(tokenizer(text, truncation=False).input_ids)
        if tokens > limit:
            cut[name] = [tokens, limit]
    return cut


def uses_cfg(info: families.ModelInfo, guidance_scale: float) -> bool:
    """Whether the denoiser runs with and without the prompt at this scale."""
    return info.guidance == families.CFG and guidance_scale > 1.0


def zimage_guidance(guidance_scale: float) -> float:
    """Z-Image's pipeline's ``guidance_scale`` for a job's: it guides as ``pos + g * (pos -
    neg)`` (and not at all at ``g = 0``), which is the usual ``neg + w * (pos - neg)`` at ``w =
    g + 1``; a scale of 1 or less is no guidance, as for every CFG family."""
    return max(float(guidance_scale) - 1.0, 0.0)


def stacked_halves(info: families.ModelInfo, do_cfg: bool) -> int:
    """How many rows an image has in one denoiser call: 2 where the pipeline stacks the
    negative and the prompt (SD, SDXL, SD3 with guidance) or the prompt and the negative
    (Z-Image), else 1 (FLUX: one call; Klein: a call for each). Row ``i + k * n`` of a batch of
    ``n`` is image ``i``'s half ``k`` either way."""
    stacks = info.pipeline != families.FLUX2_KLEIN_PIPELINE
    return 2 if do_cfg and stacks else 1


def encode(
    pipe: Any,
    info: families.ModelInfo,
    request: GenerationRequest,
    do_cfg: bool,
    device: str,
    length: int,
) -> dict[str, Any]:
    """One prompt's embeddings as the pipeline's keyword arguments."""
    negative = request.negative_prompt or None
    if info.pipeline == families.SD3_PIPELINE:
        prompt, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt=request.prompt,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=negative,
            max_sequence_length=length,
        )
        return {
            "prompt_embeds": prompt,
            "negative_prompt_embeds": negative_embeds,
            "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled,
        }
    if info.pipeline == families.FLUX_PIPELINE:
        prompt, pooled, _text_ids = pipe.encode_prompt(
            prompt=request.prompt,
            prompt_2=None,
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=length,
        )
        return {"prompt_embeds": prompt, "pooled_prompt_embeds": pooled}
    if info.pipeline == families.ZIMAGE_PIPELINE:
        # lists of one (length, width) tensor each: the prompt's own tokens, chat included
        prompt, negative_embeds = pipe.encode_prompt(
            prompt=request.prompt,
            device=device,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=request.negative_prompt or "",
            max_sequence_length=length,
        )
        return {
            "prompt_embeds": prompt,
            "negative_prompt_embeds": negative_embeds if do_cfg else None,
        }
    layers = klein_text_layers(info)
    prompt, _text_ids = pipe.encode_prompt(
        prompt=request.prompt,
        device=device,
        num_images_per_prompt=1,
        max_sequence_length=length,
        text_encoder_out_layers=layers,
    )
    embeds: dict[str, Any] = {"prompt_embeds": prompt, "negative_prompt_embeds": None}
    if do_cfg:  # Klein's pipeline would use "" for the negative: a job's own is encoded here
        embeds["negative_prompt_embeds"] = pipe.encode_prompt(
            prompt=request.negative_prompt or "",
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=length,
            text_encoder_out_layers=layers,
        )[0]
    return embeds


def call_options(info: families.ModelInfo, guidance_scale: float, length: int) -> dict[str, Any]:
    """The pipeline call's family-specific keyword arguments."""
    options: dict[str, Any] = {"max_sequence_length": length}
    if info.guidance == families.NO_GUIDANCE:
        guidance_scale = 1.0  # nothing to guide; Klein warns of a scale it ignores
    if info.pipeline == families.ZIMAGE_PIPELINE:
        guidance_scale = zimage_guidance(guidance_scale)
    options["guidance_scale"] = guidance_scale
    if info.pipeline == families.FLUX2_KLEIN_PIPELINE:
        options["text_encoder_out_layers"] = klein_text_layers(info)
    return options


def decode(pipe: Any, info: families.ModelInfo, latents: Any, width: int, height: int) -> Any:
    """One image's latents (as the pipeline returns them with ``output_type="latent"``) to an
    image tensor, as the family's pipeline decodes them (Z-Image's as SD3's and FLUX.1's: its
    latents come back unpacked, ``(1, C, H/8, W/8)``)."""
    vae = pipe.vae
    config = vae.config
    if info.pipeline == families.FLUX2_KLEIN_PIPELINE:
        # Klein's pipeline unpacks and un-normalizes before it returns latents
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    if info.pipeline == families.FLUX_PIPELINE:
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    latents = latents / config.scaling_factor + (config.get("shift_factor") or 0.0)
    return vae.decode(latents.to(vae.dtype), return_dict=False)[0]
