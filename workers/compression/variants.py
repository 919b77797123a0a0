"""Compressed variants of a model for the diffusers backend: a model folder whose UNet weights
are palettized per a recipe (dense fp values snapped to each layer's lookup table), loadable
with ``from_pretrained`` like any model, plus a JSON note of what was done."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contract.limits import UNIFORM_BITS
from workers.compression.palettize import (
    KEEP,
    NBITS,
    Palette,
    Recipe,
    apply_recipe,
    recipe_palettes,
    uniform_recipe,
)

logger = logging.getLogger(__name__)

NOTE = "orchestrate_compression.json"


def unet_megabytes(unet: Any, recipe: Recipe) -> dict[str, float]:
    """UNet size in MB at fp16 and palettized (indices plus fp16 lookup tables, one per tensor
    or one per group of output channels)."""
    modules = dict(unet.named_modules())
    by_weight = {
        id(modules[n].weight): b for n, b in recipe_palettes(recipe).items() if n in modules
    }
    fp16 = palettized = 0.0
    for p in unet.parameters():
        n = p.numel()
        fp16 += n * 2
        channels = p.shape[0] if p.dim() else 1
        palettized += by_weight.get(id(p), Palette(KEEP)).storage_bits(n, channels) / 8
    return {"fp16_mb": fp16 / 1e6, "palettized_mb": palettized / 1e6}


def denoiser(pipe: Any) -> Any:
    """The network a pipeline runs every step: its UNet, or a flow model's transformer."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


def build_torch_variant(
    pipe: Any,
    recipe: Recipe,
    out: Path,
    *,
    source_model: str,
    name: str,
    psnr_db: float | None = None,
) -> dict[str, Any]:
    """Apply ``recipe`` to ``pipe``'s denoiser (in place: the UNet, or a flow model's
    transformer) and save the pipeline to ``out`` atomically, with a note of the recipe,
    average bits and sizes (named ``unet_*`` for either)."""
    stats = apply_recipe(denoiser(pipe), recipe)
    sizes = unet_megabytes(denoiser(pipe), recipe)
    note = {
        "source_model": source_model,
        "variant": name,
        "recipe": recipe,
        **stats,
        **sizes,
        "psnr_db": psnr_db,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / NOTE).write_text(json.dumps(note, indent=2))
        # Two renames: the old folder is moved aside whole, the new one moved in whole; a
        # loader sees one or the other (or, for an instant, none), never a half-deleted tree.
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return note


def variant_folder_name(model: str, variant: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_")[-60:] or "model"
    return f"{slug}@{variant}"


def ensure_uniform_variant(model: str, variant: str) -> Path:
    """The ``8bit``/``6bit``/``4bit`` torch variant of ``model``, built once on this machine
    (every Linear/Conv2d weight of 2,048+ elements palettized) and registered."""
    from workers.backends.diffusers import load_pipeline, model_source
    from workers.compression import registry

    found = registry.lookup(model, variant, "torch")
    if found is not None:
        return found
    import torch

    out = registry.variants_dir() / variant_folder_name(model, variant)
    # One builder per variant on this machine: workers starting together wait for the
    # first one's build instead of writing the same folder at once.
    with _build_lock(out):
        found = registry.lookup(model, variant, "torch")
        if found is not None:
            return found
        nbits = UNIFORM_BITS[variant]
        assert nbits in NBITS
        pipe = load_pipeline(model_source(model), torch.float32)
        recipe = uniform_recipe(denoiser(pipe), nbits)
        logger.info("building the %s variant of %s in %s", variant, model, out)
        note = build_torch_variant(pipe, recipe, out, source_model=model, name=variant)
        registry.register(
            model,
            variant,
            "torch",
            out,
            avg_bits=note["unet_avg_bits"],
            unet_mb=note["palettized_mb"],
        )
    return out


@contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
