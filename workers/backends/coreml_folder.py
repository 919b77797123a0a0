"""Reading a folder of Core ML Stable Diffusion models, in any of the three layouts users have:

- **ours** (``orchestrate model convert|compress``): ``TextEncoder``, ``TextEncoder2`` (SDXL),
  ``Unet``, ``VAEDecoder`` as ``.mlpackage`` (and ``.mlmodelc`` once compiled), ``tokenizer/``
  (``tokenizer_2/``), ``scheduler/`` and ``orchestrate-coreml.json``;
- **Apple's Swift resources** (``torch2coreml --bundle-resources-for-swift-cli``, and the
  folders Apple publishes): the same names compiled to ``.mlmodelc``, the UNet whole or in two
  chunks (``UnetChunk1``, ``UnetChunk2``), ``vocab.json`` and ``merges.txt``, nothing else;
- **Apple's Python output** (``torch2coreml -o DIR``):
  ``Stable_Diffusion_version_<version>_{text_encoder,text_encoder_2,unet,unet_chunk1,
  unet_chunk2,vae_decoder}.mlpackage``, with the tokenizer files beside them.

Every fact the backend needs is read from the models themselves where they say it (each
input's name, dtype and shape from the package's spec or the compiled model's
``metadata.json``). What Apple's folders do not carry (the scheduler's configuration, the
VAE's latent scale, SDXL's zeros for an empty negative prompt) comes from the model's diffusers
files where a user puts them beside (``scheduler/scheduler_config.json``, ``vae/config.json``,
``model_index.json``), else Stable Diffusion's values for the family the UNet's inputs show;
``orchestrate-coreml.json`` (ours) says them all.
Nothing here needs macOS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import JobInputError
from workers.models.families import vae_scale

# Our layout's names, which ``workers.compression.coreml`` writes and the backend reads: the
# layout file, each model's package, and the text encoders' fixed sequence length.
LAYOUT = "orchestrate-coreml.json"
TEXT_ENCODER, TEXT_ENCODER_2 = "TextEncoder", "TextEncoder2"
UNET, VAE_DECODER = "Unet", "VAEDecoder"
SEQ_LEN = 77
SPEC_DTYPES = {65568: np.float32, 65552: np.float16, 131104: np.int32}  # ArrayDataType
_SCHEMA_DTYPES = {"Float32": np.float32, "Float16": np.float16, "Int32": np.int32}
UNET_CHUNKS = ("UnetChunk1", "UnetChunk2")
# Apple's torch2coreml names: Stable_Diffusion_version_<version>_<submodule>.mlpackage
APPLE_PREFIX = "Stable_Diffusion_version_"
APPLE_SUBMODULES = {
    TEXT_ENCODER: "text_encoder",
    TEXT_ENCODER_2: "text_encoder_2",
    UNET: "unet",
    UNET_CHUNKS[0]: "unet_chunk1",
    UNET_CHUNKS[1]: "unet_chunk2",
    VAE_DECODER: "vae_decoder",
}
# What Apple's folders leave out: Stable Diffusion's training schedule (SD 1.x, 2.x base and
# SDXL base share it; epsilon prediction) and each family's latent scale.
DEFAULT_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}
VAE_SCALE = {"sd": 0.18215, "sdxl": 0.13025}
SDXL_PAD_TOKEN_2 = "!"  # SDXL base's second tokenizer pads with "!" (Apple's Swift does too)


@dataclass(frozen=True)
class Declared:
    """One input as a model declares it."""

    dtype: Any
    shape: tuple[int, ...]


def model_inputs(path: Path) -> dict[str, Declared]:
    """Each input of a model with the dtype and shape it declares, read from the model itself
    (never assumed: Apple's packages take fp16, ours fp32 or fp16 by their precision). A
    package's spec is read with coremltools (any OS); a compiled ``.mlmodelc`` says it in its
    ``metadata.json``."""
    if path.suffix == ".mlmodelc":
        try:
            meta = json.loads((path / "metadata.json").read_text())
        except (OSError, ValueError) as e:
            raise JobInputError(f"{path}: cannot read metadata.json ({e})") from e
        entry = meta[0] if isinstance(meta, list) else meta
        return {
            i["name"]: Declared(
                _SCHEMA_DTYPES.get(i.get("dataType", "Float32"), np.float32),
                tuple(json.loads(i.get("shape", "[]"))),
            )
            for i in entry.get("inputSchema", [])
        }
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    return {
        i.name: Declared(
            SPEC_DTYPES.get(i.type.multiArrayType.dataType, np.float32),
            tuple(int(d) for d in i.type.multiArrayType.shape),
        )
        for i in spec.description.input
    }


def declared_inputs(path: Path) -> dict[str, Any]:
    """Each input's declared dtype (``model_inputs`` without the shapes)."""
    return {name: d.dtype for name, d in model_inputs(path).items()}


def _find(folder: Path, names: list[str]) -> Path | None:
    """The first of ``names`` present in ``folder``, compiled before package."""
    for name in names:
        for suffix in (".mlmodelc", ".mlpackage"):
            if (folder / f"{name}{suffix}").exists():
                return folder / f"{name}{suffix}"
    return None


def _apple_prefixes(folder: Path) -> list[str]:
    """The ``Stable_Diffusion_version_<version>_`` prefixes of Apple's packages in ``folder``."""
    found = set()
    for path in folder.glob(f"{APPLE_PREFIX}*"):
        for submodule in APPLE_SUBMODULES.values():
            stem = path.name.rsplit(".", 1)[0]
            if stem.endswith(f"_{submodule}"):
                found.add(stem[: -len(submodule)])
    # keep the prefixes that name a UNet (every model has one)
    return sorted(
        p for p in found if any(_find(folder, [f"{p}{s}"]) for s in ("unet", "unet_chunk1"))
    )


@dataclass
class CoreMLFolder:
    """What the backend loads from a folder: each model's path by role (the UNet as one part
    or two chunks), tokenizer sources, scheduler configuration and the family's constants."""

    folder: Path
    layout: str  # "orchestrate", "apple-resources" or "apple-packages"
    paths: dict[str, Path]
    unet_parts: list[str]
    xl: bool
    scheduler_config: dict[str, Any]
    vae_scaling_factor: float
    vae_scale: int  # image side / latent side
    force_zeros_for_empty_prompt: bool
    inputs: dict[str, dict[str, Declared]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # orchestrate-coreml.json, ours only

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.inputs[self.unet_parts[0]]["sample"].shape

    def tokenizers(self, max_length: int) -> list[Any]:
        """One CLIP tokenizer per text encoder: from ``tokenizer/`` (``tokenizer_2/``) where
        the folder has them, else from ``vocab.json`` and ``merges.txt`` (SDXL's second one
        padding with "!", as SDXL base's does)."""
        from transformers import CLIPTokenizer

        out = []
        for i, sub in enumerate(("tokenizer", "tokenizer_2")[: 2 if self.xl else 1]):
            if (self.folder / sub).is_dir():
                out.append(
                    CLIPTokenizer.from_pretrained(self.folder / sub, model_max_length=max_length)
                )
                continue
            vocab, merges = self.folder / "vocab.json", self.folder / "merges.txt"
            if not (vocab.is_file() and merges.is_file()):
                raise JobInputError(
                    f"{self.folder} has no tokenizer: put the model's vocab.json and merges.txt "
                    "beside its Core ML models (Apple's --bundle-resources-for-swift-cli writes them)"
                )
            extra = {"pad_token": SDXL_PAD_TOKEN_2} if i == 1 else {}
            out.append(CLIPTokenizer(str(vocab), str(merges), model_max_length=max_length, **extra))
        return out


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise JobInputError(f"{path}: not readable JSON ({e})") from e
    return data if isinstance(data, dict) else None


def is_coreml_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a Core ML Stable Diffusion in one of the layouts above."""
    return folder.is_dir() and (
        _find(folder, [UNET, UNET_CHUNKS[0]]) is not None or bool(_apple_prefixes(folder))
    )


def read_folder(folder: Path) -> CoreMLFolder:
    """Resolve ``folder``'s models and settings, or say in one line what is missing."""
    if not folder.is_dir():
        raise JobInputError(f"{folder} is not a folder of Core ML models")
    prefixes = _apple_prefixes(folder)
    if _find(folder, [UNET, UNET_CHUNKS[0]]) is not None:
        names = {role: role for role in APPLE_SUBMODULES}
        layout = "orchestrate" if (folder / LAYOUT).is_file() else "apple-resources"
    elif len(prefixes) == 1:
        names = {role: f"{prefixes[0]}{sub}" for role, sub in APPLE_SUBMODULES.items()}
        layout = "apple-packages"
    elif prefixes:
        raise JobInputError(
            f"{folder} holds Core ML models of more than one model version "
            f"({', '.join(p.removeprefix(APPLE_PREFIX).rstrip('_') for p in prefixes)}): "
            "give each its own folder"
        )
    else:
        raise JobInputError(
            f"{folder} has no Core ML UNet (Unet.mlmodelc, Unet.mlpackage, UnetChunk1/2 or "
            f"{APPLE_PREFIX}<version>_unet.mlpackage)"
        )
    paths: dict[str, Path] = {}
    for role in (TEXT_ENCODER, TEXT_ENCODER_2, VAE_DECODER):
        found = _find(folder, [names[role]])
        if found is not None:
            paths[role] = found
        elif role != TEXT_ENCODER_2:
            raise JobInputError(f"{folder} has no {names[role]}.mlmodelc or .mlpackage")
    whole = _find(folder, [names[UNET]])
    chunks = [_find(folder, [names[c]]) for c in UNET_CHUNKS]
    if whole is not None:
        paths[UNET], parts = whole, [UNET]
    elif all(c is not None for c in chunks):
        for role, path in zip(UNET_CHUNKS, chunks, strict=True):
            assert path is not None
            paths[role] = path
        parts = list(UNET_CHUNKS)
    else:
        raise JobInputError(f"{folder} has {names[UNET_CHUNKS[0]]} without {names[UNET_CHUNKS[1]]}")
    inputs = {role: model_inputs(path) for role, path in paths.items()}
    xl = any("text_embeds" in inputs[p] for p in parts)
    if xl and TEXT_ENCODER_2 not in paths:
        raise JobInputError(f"{folder}: an SDXL UNet needs {names[TEXT_ENCODER_2]} beside it")
    if "sample" not in inputs[parts[0]]:
        raise JobInputError(f"{paths[parts[0]].name} declares no 'sample' input")
    ours = json.loads((folder / LAYOUT).read_text()) if layout == "orchestrate" else {}
    # What Apple's folders leave out, from the model's diffusers files where a user put them
    # beside (a v-prediction model needs its scheduler's; a fine-tune its VAE's scale)
    scheduler = _json(folder / "scheduler" / "scheduler_config.json") or dict(DEFAULT_SCHEDULER)
    vae = _json(folder / "vae" / "config.json") or {}
    index = _json(folder / "model_index.json") or {}
    family = "sdxl" if xl else "sd"
    return CoreMLFolder(
        folder=folder,
        layout=layout,
        paths=paths,
        unet_parts=parts,
        xl=xl,
        scheduler_config=scheduler,
        vae_scaling_factor=float(
            ours.get("vae_scaling_factor", vae.get("scaling_factor", VAE_SCALE[family]))
        ),
        vae_scale=int(ours.get("vae_scale_factor", vae_scale(vae))),
        force_zeros_for_empty_prompt=bool(
            ours.get(
                "force_zeros_for_empty_prompt",
                xl and index.get("force_zeros_for_empty_prompt", True),
            )
        ),
        inputs=inputs,
        settings=ours,
    )
