"""Where a model named in a manifest comes from, without importing torch."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from workers.tiny import TINY_MODEL_NAME

SD_NATIVE = (512, 512)
TINY_NATIVE = (64, 64)
VAE_SCALE = 8


def is_tiny(model: str) -> bool:
    return model == TINY_MODEL_NAME


def expand_path(model: str) -> Path:
    """``model`` as a path on this machine, ``~`` expanded (``~nosuchuser`` stays as written)."""
    try:
        return Path(model).expanduser()
    except RuntimeError:  # no such user's home
        return Path(model)


def looks_like_path(model: str) -> bool:
    """Whether a model value names a local folder rather than a hub id (``owner/name``, at
    most one ``/``): it starts with ``/``, ``.`` or ``~``, has a ``\\`` or a drive letter, or
    has more than one ``/``."""
    return (
        model.startswith(("/", ".", "~", "\\"))
        or "\\" in model
        or (len(model) > 1 and model[1] == ":")
        or model.count("/") > 1
    )


def local_folder(model: str) -> Path | None:
    """The model's folder when ``model`` names one on this machine."""
    p = expand_path(model)
    return p if (p / "model_index.json").is_file() else None


def checkpoint_file(model: str) -> Path | None:
    """The model's single-file checkpoint (``.safetensors``) when ``model`` names one here."""
    p = expand_path(model)
    return p if p.suffix.lower() == ".safetensors" and p.is_file() else None


@lru_cache(maxsize=64)
def native_size(model: str) -> tuple[int, int]:
    """The (width, height) a model was trained at: the size used when a row gives none.

    Read from a local folder's UNet config; a hub id not on disk is taken as Stable Diffusion
    1.x's 512 px (give width and height in the manifest for other models).
    """
    if is_tiny(model):
        return TINY_NATIVE
    checkpoint = checkpoint_file(model)
    if checkpoint is not None:
        from workers.checkpoints import TINY_FAMILY, family

        try:
            return TINY_NATIVE if family(checkpoint) == TINY_FAMILY else SD_NATIVE
        except Exception:  # not readable as safetensors: the load will say so
            return SD_NATIVE
    folder = local_folder(model)
    if folder is not None:
        try:
            config = json.loads((folder / "unet" / "config.json").read_text())
            side = int(config["sample_size"]) * VAE_SCALE
            return (side, side)
        except (OSError, ValueError, KeyError, TypeError):
            return SD_NATIVE
    return SD_NATIVE
