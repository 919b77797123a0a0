"""Model families the diffusers backend runs, told from a model's configuration files.

A diffusers model folder says what it is: ``model_index.json`` names its pipeline class
(``_class_name``), the scheduler's config its ``prediction_type``, the UNet's its latent
``sample_size``, text width (``cross_attention_dim``) and, for SDXL, ``addition_embed_type =
"text_time"`` (pooled text embeddings and size/crop "time ids" added to the timestep), and the
VAE's its downsampling (``block_out_channels``: one level fewer than blocks). The flow-matching
families have a transformer instead of a UNet; its config gives the text width
(``joint_attention_dim``; Z-Image's ``cap_feat_dim``), SD3's its ``sample_size`` and FLUX.1's
whether guidance is an input of the model (``guidance_embeds``: dev) or not (schnell). From
these:

===========  ==========================  ==============================================  ==========
family       pipeline                    told by                                         guidance
===========  ==========================  ==============================================  ==========
sd1          StableDiffusionPipeline     768-wide text (CLIP ViT-L); native 512          cfg
sd2          StableDiffusionPipeline     1024-wide text or v-prediction; native 768      cfg
                                         (v-prediction, sample_size 96) or 512
sdxl         StableDiffusionXLPipeline   two text encoders, ``text_time`` UNet; 1024     cfg
sd3          StableDiffusion3Pipeline    MMDiT transformer (SD 3/3.5); native 1024       cfg
flux1        FluxPipeline                FLUX.1: dev (``guidance_embeds``) or schnell    distilled
                                         (without); native 1024                          or none
flux2-klein  Flux2KleinPipeline          FLUX.2 Klein (Qwen3 text); native 1024          cfg, or
                                                                                         none when
                                                                                         distilled
zimage       ZImagePipeline              Z-Image, Z-Image-Turbo (single-stream DiT,      cfg (none
                                         Qwen3 text, ``cap_feat_dim``); native 1024      at <= 1)
tiny         StableDiffusionPipeline     toy width (< 256): the built-in ``tiny``        cfg
tiny-xl      StableDiffusionXLPipeline   toy width: the built-in ``tiny-xl``             cfg
tiny-sd3     StableDiffusion3Pipeline    toy width: the built-in ``tiny-sd3``            cfg
tiny-flux    FluxPipeline                toy width: the built-in ``tiny-flux`` (dev)     distilled
tiny-flux2   Flux2KleinPipeline          toy width: the built-in ``tiny-flux2``          cfg
tiny-zimage  ZImagePipeline              toy width: the built-in ``tiny-zimage``         cfg
===========  ==========================  ==============================================  ==========

``guidance`` is what a manifest's ``guidance_scale`` means for the model: ``cfg`` classifier-free
guidance (the denoiser runs with and without the prompt), ``distilled`` the guidance value FLUX.1
dev takes as an input (one denoiser call a step; A1111/Forge call it "Distilled CFG Scale"),
``none`` a model that takes no guidance (FLUX.1 schnell, a step-distilled Klein): the value is
recorded and does nothing.

Z-Image-Turbo is step-distilled (8-9 steps, run without guidance), but nothing in its configs
says so as Klein's ``is_distilled`` does: its ``model_index.json`` and transformer config are
those of the base Z-Image, which runs classifier-free guidance. So ``zimage`` is ``cfg`` for
both, and as for every ``cfg`` family a ``guidance_scale`` of 1 or less means no guidance: give
the Turbo 1. (Z-Image's pipeline counts its scale one lower, ``pos + g * (pos - neg)``: its
model card's 0.0 for the Turbo is 1 here; ``workers.backends.flow`` converts.)

The native size is read from the configs when they are there (UNet or SD3 transformer
``sample_size`` x the VAE's scale), the family's usual one when not. Any other pipeline class
(an img2img, inpainting or refiner-only pipeline, ...) is refused with one line.

No torch here: the manifest validator and preflight read configs, nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import JobInputError

SD_PIPELINE = "StableDiffusionPipeline"
SDXL_PIPELINE = "StableDiffusionXLPipeline"
SD3_PIPELINE = "StableDiffusion3Pipeline"
FLUX_PIPELINE = "FluxPipeline"
FLUX2_KLEIN_PIPELINE = "Flux2KleinPipeline"
ZIMAGE_PIPELINE = "ZImagePipeline"
# Denoised with a UNet by a diffusion (noise/v-prediction) sampler; with a transformer by a
# flow-matching one.
DIFFUSION_PIPELINES = (SD_PIPELINE, SDXL_PIPELINE)
FLOW_PIPELINES = (SD3_PIPELINE, FLUX_PIPELINE, FLUX2_KLEIN_PIPELINE, ZIMAGE_PIPELINE)
PIPELINES = DIFFUSION_PIPELINES + FLOW_PIPELINES

# What a family's model is: denoised by a diffusion sampler or a flow-matching one.
DIFFUSION = "diffusion"
FLOW = "flow"
# What a manifest's guidance_scale means (see the table above).
CFG = "cfg"
DISTILLED = "distilled"
NO_GUIDANCE = "none"

# Narrower text than any real family's (768, 1024, 2048, 2560): the built-in toy models.
TOY_TEXT_WIDTH = 256
SD2_TEXT_WIDTH = 1024


@dataclass(frozen=True)
class Family:
    name: str
    pipeline: str  # the diffusers pipeline class that runs it
    native: int  # side in pixels when the configs do not say
    title: str

    @property
    def kind(self) -> str:
        """DIFFUSION (a UNet, noise or v-prediction) or FLOW (a transformer, flow matching)."""
        return FLOW if self.pipeline in FLOW_PIPELINES else DIFFUSION


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd1", SD_PIPELINE, 512, "Stable Diffusion 1.x"),
        Family("sd2", SD_PIPELINE, 512, "Stable Diffusion 2.x"),
        Family("sdxl", SDXL_PIPELINE, 1024, "SDXL base"),
        Family("sd3", SD3_PIPELINE, 1024, "Stable Diffusion 3/3.5"),
        Family("flux1", FLUX_PIPELINE, 1024, "FLUX.1"),
        Family("flux2-klein", FLUX2_KLEIN_PIPELINE, 1024, "FLUX.2 Klein"),
        Family("zimage", ZIMAGE_PIPELINE, 1024, "Z-Image"),
        Family("tiny", SD_PIPELINE, 64, "the built-in tiny Stable Diffusion"),
        Family("tiny-xl", SDXL_PIPELINE, 64, "the built-in tiny SDXL"),
        Family("tiny-sd3", SD3_PIPELINE, 64, "the built-in tiny SD3"),
        Family("tiny-flux", FLUX_PIPELINE, 64, "the built-in tiny FLUX.1"),
        Family("tiny-flux2", FLUX2_KLEIN_PIPELINE, 64, "the built-in tiny FLUX.2 Klein"),
        Family("tiny-zimage", ZIMAGE_PIPELINE, 64, "the built-in tiny Z-Image"),
    )
}
# The full-size family of each pipeline, and its toy-width (built-in) one.
_BY_PIPELINE = {
    SD3_PIPELINE: ("sd3", "tiny-sd3"),
    FLUX_PIPELINE: ("flux1", "tiny-flux"),
    FLUX2_KLEIN_PIPELINE: ("flux2-klein", "tiny-flux2"),
    ZIMAGE_PIPELINE: ("zimage", "tiny-zimage"),
}
# The transformer config key that gives a flow family's text (caption) width.
_TEXT_WIDTH_KEY = {ZIMAGE_PIPELINE: "cap_feat_dim"}
SUPPORTED = (
    "Stable Diffusion 1.x and 2.x (StableDiffusionPipeline), SDXL base "
    "(StableDiffusionXLPipeline), Stable Diffusion 3/3.5 (StableDiffusion3Pipeline), FLUX.1 "
    "(FluxPipeline), FLUX.2 Klein (Flux2KleinPipeline) and Z-Image (ZImagePipeline)"
)


class UnsupportedModel(JobInputError):
    """The model is of a family this tool does not run; retrying will not help."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model's configs say about it."""

    family: Family
    pipeline: str  # pipeline class to load it with
    prediction_type: str  # epsilon, v_prediction or sample; flow_prediction for flow models
    sample_size: int | None  # latent side, when the UNet config gives it
    vae_scale: int  # image side / latent side
    native_size: tuple[int, int]  # (width, height)
    guidance: str = CFG  # what a manifest's guidance_scale means for it (CFG, DISTILLED, NONE)


Reader = Callable[[str], Mapping[str, Any] | None]
"""Reads one of a model's JSON files by its path in the model (``unet/config.json``); None
when it is not there or not JSON."""


def folder_reader(folder: Path) -> Reader:
    def read(name: str) -> Mapping[str, Any] | None:
        return _json_file(folder / name)

    return read


def hub_cache_reader(repo_id: str) -> Reader:
    """Reads a hub model's files from this machine's Hugging Face cache only: no network."""

    def read(name: str) -> Mapping[str, Any] | None:
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(repo_id, name)
        except Exception:  # not a valid repo id, unreadable cache
            return None
        return _json_file(Path(found)) if isinstance(found, str) else None

    return read


def hub_reader(repo_id: str) -> Reader:
    """Reads a hub model's files from the cache, downloading each small JSON file when the hub
    can be reached (what ``from_pretrained`` is about to do anyway)."""

    def read(name: str) -> Mapping[str, Any] | None:
        from huggingface_hub import hf_hub_download

        try:
            return _json_file(Path(hf_hub_download(repo_id, name)))
        except Exception:  # offline, no such file or repo: the load says what is wrong
            return None

    return read


def _json_file(path: Path) -> Mapping[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _width(unet: Mapping[str, Any]) -> int | None:
    value = unet.get("cross_attention_dim")
    if isinstance(value, list | tuple):  # one per block in some configs
        value = value[0] if value else None
    return int(value) if isinstance(value, int | float) else None


def vae_scale(vae: Mapping[str, Any] | None) -> int:
    """Image side over latent side: 2 per VAE level after the first (8 when unknown)."""
    blocks = (vae or {}).get("block_out_channels")
    if isinstance(blocks, list | tuple) and blocks:
        return int(2 ** (len(blocks) - 1))
    return 8


def pipeline_class(read: Reader) -> str | None:
    """The pipeline class ``model_index.json`` names; None when there is none to read."""
    index = read("model_index.json")
    name = (index or {}).get("_class_name")
    return name if isinstance(name, str) else None


def refusal(class_name: str) -> str:
    """The one line that refuses a pipeline class."""
    return (
        f"its model_index.json names {class_name}, a kind of model this tool does not run; "
        f"it runs {SUPPORTED}"
    )


def classify(
    class_name: str | None,
    unet: Mapping[str, Any] | None,
    scheduler: Mapping[str, Any] | None,
    vae: Mapping[str, Any] | None,
    transformer: Mapping[str, Any] | None = None,
    index: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """The family of a model from its configs (any may be missing: a folder without a class
    name is taken as Stable Diffusion, as it always was here). UnsupportedModel when the
    class is not one this tool runs, or the UNet is not the one the class needs. ``index``:
    ``model_index.json`` itself (Klein says there whether it is step-distilled)."""
    pipeline = class_name or SD_PIPELINE
    if pipeline not in PIPELINES:
        raise UnsupportedModel(refusal(pipeline))
    if pipeline in FLOW_PIPELINES:
        return _classify_flow(pipeline, transformer or {}, vae, index or {})
    unet = unet or {}
    text_time = unet.get("addition_embed_type") == "text_time"
    if unet and text_time != (pipeline == SDXL_PIPELINE):
        raise UnsupportedModel(
            f"its model_index.json names {pipeline} but its UNet "
            + ("takes" if text_time else "lacks")
            + " SDXL's added text/time embeddings (addition_embed_type "
            + f"{unet.get('addition_embed_type')!r}); it runs {SUPPORTED}"
        )
    prediction = str((scheduler or {}).get("prediction_type") or "epsilon")
    width = _width(unet)
    toy = width is not None and width < TOY_TEXT_WIDTH
    if pipeline == SDXL_PIPELINE:
        family = FAMILIES["tiny-xl" if toy else "sdxl"]
    elif toy:  # the built-in tiny (trained with v-prediction) and models of its size
        family = FAMILIES["tiny"]
    elif width == SD2_TEXT_WIDTH or prediction == "v_prediction":
        family = FAMILIES["sd2"]
    else:
        family = FAMILIES["sd1"]
    sample_size = _sample_size(unet)
    scale = vae_scale(vae)
    if sample_size is not None:
        side = sample_size * scale
    elif family.name == "sd2" and prediction == "v_prediction":
        side = 768  # SD 2.x 768-v; its 512 base predicts noise
    else:
        side = family.native
    return ModelInfo(family, pipeline, prediction, sample_size, scale, (side, side))


def _classify_flow(
    pipeline: str,
    transformer: Mapping[str, Any],
    vae: Mapping[str, Any] | None,
    index: Mapping[str, Any],
) -> ModelInfo:
    """SD3, FLUX.1, FLUX.2 Klein or Z-Image (or a toy of each) from its transformer's
    config."""
    full, toy = _BY_PIPELINE[pipeline]
    width = transformer.get(_TEXT_WIDTH_KEY.get(pipeline, "joint_attention_dim"))
    narrow = isinstance(width, int) and width < TOY_TEXT_WIDTH
    family = FAMILIES[toy if narrow else full]
    if pipeline == FLUX_PIPELINE:
        guidance = DISTILLED if transformer.get("guidance_embeds") else NO_GUIDANCE
    elif pipeline == FLUX2_KLEIN_PIPELINE:
        guidance = NO_GUIDANCE if index.get("is_distilled") else CFG
    else:
        guidance = CFG
    # SD3's transformer gives its latent side; FLUX's and Z-Image's configs do not (1024 px, or
    # 64 for the built-in toys).
    sample_size = _sample_size(transformer) if pipeline == SD3_PIPELINE else None
    scale = vae_scale(vae)
    side = sample_size * scale if sample_size is not None else family.native
    return ModelInfo(
        family, pipeline, "flow_prediction", sample_size, scale, (side, side), guidance
    )


def guidance_title(guidance: str) -> str:
    """What ``guidance_scale`` is called for a model whose guidance is ``guidance``."""
    return {
        CFG: "classifier-free guidance",
        DISTILLED: "distilled guidance (an input of the model)",
        NO_GUIDANCE: "nothing (the model takes no guidance)",
    }[guidance]


def _sample_size(unet: Mapping[str, Any] | None) -> int | None:
    value = (unet or {}).get("sample_size")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def native_of(read: Reader) -> tuple[int, int]:
    """The native size the configs give, whatever the family (512 when they do not say)."""
    sample_size = _sample_size(read("unet/config.json") or read("transformer/config.json"))
    if sample_size is None:
        return (512, 512)
    side = sample_size * vae_scale(read("vae/config.json"))
    return (side, side)


def detect(read: Reader) -> ModelInfo:
    """The family of the model whose files ``read`` reads (see ``classify``)."""
    index = read("model_index.json")
    name = (index or {}).get("_class_name")
    flow = name in FLOW_PIPELINES
    return classify(
        name if isinstance(name, str) else None,
        None if flow else read("unet/config.json"),
        read("scheduler/scheduler_config.json"),
        read("vae/config.json"),
        read("transformer/config.json") if flow else None,
        index,
    )


def detect_folder(folder: Path) -> ModelInfo:
    return detect(folder_reader(folder))


def of_pipeline(pipe: Any) -> ModelInfo:
    """The family of a loaded pipeline, from its components' configs (a single-file
    checkpoint has no folder to read)."""
    name = type(pipe).__name__
    flow = name in FLOW_PIPELINES
    return classify(
        name,
        None if flow else dict(pipe.unet.config),
        dict(pipe.scheduler.config),
        dict(pipe.vae.config),
        dict(pipe.transformer.config) if flow else None,
        dict(pipe.config),
    )


def sdxl_time_ids(width: int, height: int, rows: int = 2) -> Any:
    """SDXL's size conditioning as its pipeline defaults it, one row per UNet batch row
    (numpy, float32): original size and target size the image's own, crop at (0, 0)."""
    import numpy as np

    return np.array([[height, width, 0, 0, height, width]] * rows, dtype=np.float32)
