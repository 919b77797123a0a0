"""Compressed variants of a model for the diffusers backend: a model folder whose UNet weights
are palettized per a recipe (dense fp values snapped to each layer's lookup table) or linearly
quantized per block of input channels (``int4b32``: the values coremltools' int4 per-block
quantization reconstructs), loadable with ``from_pretrained`` like any model, plus a JSON note
of what was done."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from contract.limits import BLOCK_QUANTIZED, UNIFORM_BITS
from workers.compression.palettize import (
    KEEP,
    NBITS,
    UNIFORM_MIN_SIZE,
    Palette,
    Recipe,
    apply_recipe,
    block_quantizable,
    block_quantize_array,
    block_quantized_bits,
    candidate_layers,
    denoiser,
    get_weight,
    recipe_palettes,
    set_weight,
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
    save_variant(pipe, out, note)
    return note


def save_variant(pipe: Any, out: Path, note: dict[str, Any]) -> None:
    """Save the pipeline and its ``note`` to ``out`` atomically (replacing what was there)."""
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


def block_layers(unet: Any, block: int, min_size: float = UNIFORM_MIN_SIZE) -> dict[str, int]:
    """The Linear/Conv2d layers of more than ``min_size`` elements (those a uniform variant
    palettizes) that coremltools' per-block quantization takes: input channels in whole
    blocks (:func:`block_quantizable`). Their weights' sizes, by name."""
    modules = dict(unet.named_modules())
    return {
        name: n
        for name, n in candidate_layers(unet, min_size).items()
        if block_quantizable(tuple(modules[name].weight.shape), block)
    }


def block_sizes(unet: Any, layers: Iterable[str], bits: int, block: int) -> dict[str, float]:
    """Average bits per weight of the ``layers`` quantized per block (``bits`` each and one fp16
    scale per block) and of the whole UNet or transformer (its other parameters at fp16), and
    its MB at fp16 and so quantized (as :func:`unet_megabytes`)."""
    modules = dict(unet.named_modules())
    by_weight = {
        id(modules[n].weight): block_quantized_bits(tuple(modules[n].weight.shape), bits, block)
        for n in layers
    }
    layer_bits = layer_numel = total_bits = total_numel = 0.0
    for p in unet.parameters():
        n = p.numel()
        bits_each = by_weight.get(id(p), float(KEEP))
        total_bits += n * bits_each
        total_numel += n
        if id(p) in by_weight:
            layer_bits += n * bits_each
            layer_numel += n
    return {
        "quantized_avg_bits": layer_bits / layer_numel if layer_numel else float(KEEP),
        "unet_avg_bits": total_bits / total_numel,
        "fp16_mb": total_numel * KEEP / 8 / 1e6,
        "quantized_mb": total_bits / 8 / 1e6,
    }


def quantize_per_block(
    unet: Any, bits: int, block: int, min_size: float = UNIFORM_MIN_SIZE
) -> dict[str, int]:
    """Set each of the :func:`block_layers` of ``unet`` (or a transformer) to the values
    coremltools' per-block ``linear_symmetric`` quantization reconstructs from its weight at
    fp16, as an fp16 Core ML model holds it (fp16 scales); returns those layers' sizes."""
    modules = dict(unet.named_modules())
    layers = block_layers(unet, block, min_size)
    for layer in layers:
        weight = get_weight(modules[layer]).astype(np.float16)
        set_weight(modules[layer], block_quantize_array(weight, bits, block))
    return layers


def build_block_variant(
    pipe: Any,
    out: Path,
    *,
    source_model: str,
    name: str,
    bits: int,
    block: int,
    min_size: float = UNIFORM_MIN_SIZE,
) -> dict[str, Any]:
    """Quantize ``pipe``'s denoiser in place (:func:`quantize_per_block`) and save the
    pipeline to ``out`` atomically, with a note of the layers quantized, those above
    ``min_size`` left as they are (input channels not in whole blocks, as coremltools skips
    them), average bits and sizes (named ``unet_*`` for a transformer too)."""
    net = denoiser(pipe)
    layers = quantize_per_block(net, bits, block, min_size)
    note = {
        "source_model": source_model,
        "variant": name,
        "quantization": {
            "mode": "linear_symmetric",
            "dtype": f"int{bits}",
            "granularity": "per_block",
            "block_size": block,
            "weight_threshold": int(min_size),
            "scales": "fp16",
        },
        "quantized_layers": list(layers),
        "kept_layers": [n for n in candidate_layers(net, min_size) if n not in layers],
        **block_sizes(net, layers, bits, block),
        "psnr_db": None,
    }
    save_variant(pipe, out, note)
    return note


def variant_folder_name(model: str, variant: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_")[-60:] or "model"
    return f"{slug}@{variant}"


def ensure_uniform_variant(model: str, variant: str) -> Path:
    """The ``8bit``/``6bit``/``4bit`` torch variant of ``model``, built once on this machine
    (every Linear/Conv2d weight of 2,048+ elements palettized) and registered."""
    nbits = UNIFORM_BITS[variant]
    assert nbits in NBITS

    def build(pipe: Any, out: Path) -> tuple[float, float]:
        recipe = uniform_recipe(denoiser(pipe), nbits)
        note = build_torch_variant(pipe, recipe, out, source_model=model, name=variant)
        return note["unet_avg_bits"], note["palettized_mb"]

    return _ensure_variant(model, variant, build)


def ensure_block_variant(model: str, variant: str) -> Path:
    """The ``int4b32`` torch variant of ``model`` (:data:`contract.limits.BLOCK_QUANTIZED`),
    built once on this machine (every Linear/Conv2d weight of 2,048+ elements whose input
    channels split into blocks of 32 linearly quantized, int4 with an fp16 scale per block)
    and registered."""
    bits, block = BLOCK_QUANTIZED[variant]

    def build(pipe: Any, out: Path) -> tuple[float, float]:
        note = build_block_variant(
            pipe, out, source_model=model, name=variant, bits=bits, block=block
        )
        return note["unet_avg_bits"], note["quantized_mb"]

    return _ensure_variant(model, variant, build)


def _ensure_variant(
    model: str, variant: str, build: Callable[[Any, Path], tuple[float, float]]
) -> Path:
    """``variant`` of ``model`` as registered, or made by ``build(pipe, out)`` from the fp32
    pipeline (returning the denoiser's average bits and MB) and registered."""
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
        pipe = load_pipeline(model_source(model), torch.float32)
        logger.info("building the %s variant of %s in %s", variant, model, out)
        avg_bits, megabytes = build(pipe, out)
        registry.register(model, variant, "torch", out, avg_bits=avg_bits, unet_mb=megabytes)
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
