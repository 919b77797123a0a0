"""Weight palettization: a k-means lookup table of 2^n values per tensor, and the uniform
8-bit linear quantization baseline. Pure numpy/torch: no coremltools needed for analysis."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from orchestrator.errors import CompressionError

NBITS = (1, 2, 4, 6, 8)  # the widths the Neural Engine accelerates
KEEP = 16  # a recipe's "leave this layer in fp16"
APPLE_MIN_SIZE = 100_000  # Apple's candidate threshold (elements); the tiny model needs less
UNIFORM_MIN_SIZE = 2048  # coremltools' default weight_threshold, used for uniform variants


def kmeans_lut(values: np.ndarray, nbits: int, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means in one dimension: a sorted lookup table of ``2**nbits`` fp16 values and
    the index of each element's entry. Deterministic (starts from quantiles). The data is
    sorted once; each iteration then costs O(k log n) with prefix sums instead of O(n)."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    k = 2**nbits
    data = np.sort(flat).astype(np.float64)
    prefix = np.concatenate(([0.0], np.cumsum(data)))
    centroids = np.quantile(data, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        # cluster j holds data[edges[j]:edges[j + 1]]
        edges = np.concatenate(
            ([0], np.searchsorted(data, (centroids[1:] + centroids[:-1]) / 2), [data.size])
        )
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids, rtol=0, atol=1e-10):
            break
        centroids = updated
    lut = np.sort(centroids).astype(np.float16)
    idx = np.searchsorted((lut[1:].astype(np.float32) + lut[:-1].astype(np.float32)) / 2, flat)
    return lut, idx.astype(np.uint8 if k <= 256 else np.uint16)


def palettize_array(values: np.ndarray, nbits: int) -> np.ndarray:
    """The tensor with every element replaced by its lookup-table entry (same shape, fp32)."""
    lut, idx = kmeans_lut(values, nbits)
    return lut.astype(np.float32)[idx].reshape(values.shape)


def linear_quantize_array(values: np.ndarray, nbits: int = 8) -> np.ndarray:
    """Asymmetric linear quantization per output channel (axis 0), dequantized back."""
    v = np.asarray(values, dtype=np.float32)
    flat = v.reshape(v.shape[0], -1)
    lo = np.minimum(flat.min(axis=1, keepdims=True), 0.0)
    hi = np.maximum(flat.max(axis=1, keepdims=True), 0.0)
    levels = 2**nbits - 1
    scale = np.where(hi > lo, (hi - lo) / levels, 1.0)
    zero = np.round(-lo / scale)
    q = np.clip(np.round(flat / scale) + zero, 0, levels)
    return ((q - zero) * scale).reshape(v.shape).astype(np.float32)


def candidate_layers(unet: Any, min_size: float) -> dict[str, int]:
    """Linear and Conv2d modules whose weight has more than ``min_size`` elements, by name."""
    import torch.nn as nn

    return {
        name: int(m.weight.numel())
        for name, m in unet.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d) and m.weight.numel() > min_size
    }


def weight_modules(unet: Any) -> Iterator[tuple[str, Any]]:
    """Every module with a weight tensor (what the uniform baselines quantize)."""
    for name, m in unet.named_modules():
        w = getattr(m, "weight", None)
        if w is not None and hasattr(w, "data") and w.dim() >= 2:
            yield name, m


def set_weight(module: Any, array: np.ndarray) -> None:
    import torch

    module.weight.data = torch.from_numpy(np.ascontiguousarray(array)).to(module.weight.dtype)


def get_weight(module: Any) -> np.ndarray:
    return module.weight.data.detach().cpu().float().numpy()


def apply_recipe(unet: Any, recipe: dict[str, int]) -> dict[str, float]:
    """Palettize the UNet in place per ``recipe`` (module name -> bits; 16 keeps it).
    Returns the average bits over the recipe's layers and over every weight of the UNet."""
    modules = dict(unet.named_modules())
    missing = [name for name in recipe if name not in modules]
    if missing:
        raise KeyError(
            f"the recipe names {len(missing)} layers this UNet does not have, e.g. {missing[0]!r}"
        )
    bits_total = numel_total = 0.0
    for name, bits in recipe.items():
        if bits not in (*NBITS, KEEP):
            raise CompressionError(f"recipe gives {name!r} {bits} bits; allowed: {NBITS} or {KEEP}")
        module = modules[name]
        n = module.weight.numel()
        bits_total += n * bits
        numel_total += n
        if bits != KEEP:
            set_weight(module, palettize_array(get_weight(module), bits))
    return {
        "recipe_avg_bits": bits_total / numel_total if numel_total else float(KEEP),
        "unet_avg_bits": unet_average_bits(unet, recipe),
    }


def unet_average_bits(unet: Any, recipe: dict[str, int]) -> float:
    """Average bits per parameter of the whole UNet (layers not in the recipe stay fp16)."""
    bits = total = 0.0
    names = {name: m for name, m in unet.named_modules()}
    in_recipe = {id(names[n].weight): b for n, b in recipe.items() if n in names}
    for p in unet.parameters():
        n = p.numel()
        bits += n * in_recipe.get(id(p), KEEP)
        total += n
    return bits / total


def uniform_recipe(unet: Any, nbits: int, min_size: float = UNIFORM_MIN_SIZE) -> dict[str, int]:
    return {name: nbits for name in candidate_layers(unet, min_size)}


def psnr(reference: np.ndarray, test: np.ndarray, cap: float = 120.0) -> float:
    """Peak signal-to-noise ratio in dB, peak = max |reference|; identical arrays give ``cap``."""
    ref = np.asarray(reference, dtype=np.float64)
    mse = float(np.mean((ref - np.asarray(test, dtype=np.float64)) ** 2))
    peak = float(np.max(np.abs(ref)))
    if mse == 0.0 or peak == 0.0:
        return cap
    return float(min(cap, 20 * np.log10(peak) - 10 * np.log10(mse)))


def mean(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals)
