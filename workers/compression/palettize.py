"""Weight palettization: k-means lookup tables of 2^n values, one per tensor or one per group
of output channels, the uniform 8-bit linear quantization baseline, and coremltools' linear
quantization per block of input channels (int4, blocks of 32: :func:`block_quantize_array`).
Pure numpy/torch: no coremltools needed for analysis.

How a layer is palettized is a :class:`Palette`. In recipes and analysis JSON it is written as:

- an int, Apple's format: ``1``, ``2``, ``4``, ``6`` or ``8`` bits with one lookup table for the
  whole tensor, or ``16`` to keep the layer in fp16;
- a string ``"<bits>g<group size>"``, e.g. ``"4g16"``: 4-bit indices and one lookup table per
  16 consecutive output channels (axis 0), coremltools' ``per_grouped_channel`` granularity,
  which needs an iOS 18 / macOS 15 deployment target.

:func:`parse_palette` reads both forms (and the analysis' string keys, ``"4"``); everything that
reads a recipe goes through it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.errors import CompressionError

NBITS = (1, 2, 4, 6, 8)  # the widths the Neural Engine accelerates
KEEP = 16  # a recipe's "leave this layer in fp16"
APPLE_MIN_SIZE = 100_000  # Apple's candidate threshold (elements); the tiny model needs less
UNIFORM_MIN_SIZE = 2048  # coremltools' default weight_threshold, used for uniform variants
LUT_ENTRY_BITS = 16  # lookup tables hold fp16 values
# The minimum OS a Core ML package needs: per-tensor tables run on macOS 13 / iOS 16; grouped
# tables need the iOS 18 opset (macOS 15 / iOS 18).
PER_TENSOR_OS, GROUPED_OS = "macOS13", "macOS15"

RecipeValue = int | str
Recipe = dict[str, RecipeValue]
_GROUPED = re.compile(r"^(\d+)g(\d+)$")


@dataclass(frozen=True)
class Palette:
    """How one layer is stored: ``bits``-bit indices into fp16 lookup tables of ``2**bits``
    entries, one table per tensor (``group_size`` None) or one per ``group_size`` consecutive
    output channels; ``bits`` 16 (:data:`KEEP`) leaves the layer in fp16."""

    bits: int
    group_size: int | None = None

    @property
    def keep(self) -> bool:
        return self.bits == KEEP

    @property
    def grouped(self) -> bool:
        return self.group_size is not None

    @property
    def key(self) -> str:
        """The analysis JSON key: ``"4"``, ``"4g16"``."""
        return f"{self.bits}g{self.group_size}" if self.grouped else str(self.bits)

    def to_json(self) -> RecipeValue:
        """The recipe value: the int bits per tensor (Apple's format), ``"4g16"`` grouped."""
        return self.key if self.grouped else self.bits

    def __str__(self) -> str:
        return self.key

    def tables(self, channels: int | None) -> int:
        """How many lookup tables a weight with ``channels`` output channels gets."""
        if self.keep:
            return 0
        if self.group_size is None:
            return 1
        if channels is None:
            raise CompressionError(f"palettization {self.key!r} needs the layer's output channels")
        return -(-channels // self.group_size)

    def storage_bits(self, numel: int, channels: int | None = None) -> float:
        """Bits a weight of ``numel`` elements takes: indices plus fp16 lookup tables."""
        if self.keep:
            return float(numel * KEEP)
        return float(numel * self.bits + self.tables(channels) * 2**self.bits * LUT_ENTRY_BITS)

    def fits(self, channels: int) -> bool:
        """Whether a weight with ``channels`` output channels splits into whole groups
        (coremltools leaves a weight that does not uncompressed, with only a log warning)."""
        return self.group_size is None or channels % self.group_size == 0

    def palettize(self, values: np.ndarray) -> np.ndarray:
        """``values`` with every element replaced by its lookup-table entry (fp32)."""
        if self.keep:
            return np.asarray(values, dtype=np.float32)
        if self.group_size is None:
            return palettize_array(values, self.bits)
        return palettize_grouped(values, self.bits, self.group_size)


def parse_palette(value: object, where: str = "palettization") -> Palette:
    """A recipe value or analysis key as a :class:`Palette`; ``where`` names it in errors."""
    bits: int | None = None
    group: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        bits = value
    elif isinstance(value, str) and value.isdigit():
        bits = int(value)
    elif isinstance(value, str) and (m := _GROUPED.match(value)):
        bits, group = int(m.group(1)), int(m.group(2))
    if bits is not None and (
        (group is None and bits in (*NBITS, KEEP)) or (group and group > 0 and bits in NBITS)
    ):
        return Palette(bits, group)
    raise CompressionError(
        f"{where}: {value!r} is not a palettization; use {', '.join(map(str, NBITS))} bits "
        f"(one lookup table per tensor), {KEEP} (keep fp16), or '<bits>g<group size>' such as "
        "'4g16' (one lookup table per 16 output channels)"
    )


def recipe_palettes(recipe: Mapping[str, object], where: str = "recipe") -> dict[str, Palette]:
    """Every layer's palette, each value checked (errors name the layer)."""
    return {name: parse_palette(v, f"{where}: layer {name!r}") for name, v in recipe.items()}


def recipe_minimum_os(recipe: Mapping[str, object]) -> str:
    """The oldest OS a Core ML package palettized per ``recipe`` runs on."""
    grouped = any(p.grouped for p in recipe_palettes(recipe).values())
    return GROUPED_OS if grouped else PER_TENSOR_OS


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


def grouped_luts(values: np.ndarray, nbits: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """coremltools' ``per_grouped_channel`` k-means: output channels (axis 0) split into groups
    of ``group_size`` consecutive channels, each with its own sorted table of ``2**nbits`` fp16
    values. Returns the tables (groups, 2**nbits) and each element's index (the shape of
    ``values``). Deterministic, like :func:`kmeans_lut`."""
    v = np.asarray(values, dtype=np.float32)
    channels = v.shape[0] if v.ndim else 0
    if group_size < 1 or channels % group_size:
        raise CompressionError(
            f"cannot palettize a weight of shape {tuple(v.shape)} in groups of {group_size} "
            f"output channels: {channels} is not a multiple of {group_size}"
        )
    groups = v.reshape(channels // group_size, -1)
    pairs = [kmeans_lut(g, nbits) for g in groups]
    luts = np.stack([lut for lut, _ in pairs])
    idx = np.stack([i for _, i in pairs]).reshape(v.shape)
    return luts, idx


def palettize_grouped(values: np.ndarray, nbits: int, group_size: int) -> np.ndarray:
    """The tensor with every element replaced by its group's lookup-table entry (fp32)."""
    luts, idx = grouped_luts(values, nbits, group_size)
    groups = luts.shape[0]
    flat_idx = idx.reshape(groups, -1)
    dense = np.take_along_axis(luts.astype(np.float32), flat_idx, axis=1)
    return dense.reshape(np.shape(values))


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


def block_quantizable(shape: Sequence[int], block: int = 32) -> bool:
    """Whether coremltools' ``per_block`` linear quantization takes a weight of this shape: a
    Linear (out, in) or Conv2d (out, in, kh, kw) weight whose input channels (axis 1) split
    into whole blocks. coremltools skips any other weight (with a log warning) and leaves it as
    it was: a last partial block is never quantized, nor fewer than ``block`` input channels."""
    return len(shape) >= 2 and block > 0 and shape[1] > 0 and shape[1] % block == 0


def block_quantize_array(weight: np.ndarray, bits: int = 4, block: int = 32) -> np.ndarray:
    """The weight as coremltools 9 reconstructs it after ``OpLinearQuantizerConfig(
    mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32)`` (``bits``
    and ``block`` generalize the two numbers), same shape, as float32.

    Each block is one output channel's ``block`` consecutive input channels (axis 1), with all
    of a Conv2d's kernel positions: (1, 32) of a Linear weight, (1, 32, kh, kw) of a Conv2d one.
    A block's scale is ``max|w| / 7`` (coremltools writes ``(max - min) / (q_max - q_min)`` over
    the symmetric range [-max|w|, max|w|] and the int4 range [-7, 7]: -8 is never used), there
    is no zero point, ``q = clip(round(w / scale), -7, 7)`` with numpy's round-half-to-even, and
    the weight is ``q * scale`` rounded to the scale's dtype. Arithmetic is in the weight's own
    float dtype, as coremltools' is: pass an fp16 weight (what an fp16 Core ML model holds) for
    fp16 scales, bit for bit what its ``decompress_weights`` gives. A weight
    :func:`block_quantizable` refuses, or one holding an infinity, is returned as it is, as
    coremltools skips it. An all-zero block stays zero (coremltools divides 0 by a 0 scale,
    and multiplies whatever it gets back by 0)."""
    w = np.asarray(weight)
    if not np.issubdtype(w.dtype, np.floating):
        w = w.astype(np.float32)
    if not block_quantizable(w.shape, block) or np.any(np.isinf(w)):
        return w.astype(np.float32)
    out_channels, in_channels = w.shape[:2]
    # (out, blocks, block, kernel positions): a block's values are axes 2 and 3
    blocks = w.reshape(out_channels, in_channels // block, block, -1)
    q_max = 2 ** (bits - 1) - 1
    max_abs = np.maximum(
        np.abs(blocks.min(axis=(2, 3), keepdims=True)),
        np.abs(blocks.max(axis=(2, 3), keepdims=True)),
    )
    scale = (max_abs - -max_abs) / (q_max - -q_max)  # coremltools' order of operations
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.round(blocks / scale), -q_max, q_max)
    q = np.where(scale == 0, 0, q)
    dense = (q.astype(np.float32) * scale.astype(np.float32)).astype(scale.dtype)
    return dense.reshape(w.shape).astype(np.float32)


def block_quantized_bits(
    weight_shape: Sequence[int], bits: int = 4, block: int = 32, scale_bits: int = 16
) -> float:
    """Average bits per weight stored by :func:`block_quantize_array`: ``bits`` per weight and
    one ``scale_bits`` scale per block (4.5 for a Linear weight in blocks of 32, fp16 scales;
    4 + 16/288 for a 3x3 Conv2d, whose blocks hold 32 x 9 weights); :data:`KEEP` (16, fp16)
    for a weight coremltools would skip."""
    if not block_quantizable(weight_shape, block):
        return float(KEEP)
    per_block = block * int(np.prod(weight_shape[2:], dtype=np.int64))
    return bits + scale_bits / per_block


def denoiser(pipe: Any) -> Any:
    """The network a pipeline runs every step: its UNet, or a flow model's transformer."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


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


def apply_recipe(unet: Any, recipe: Mapping[str, object]) -> dict[str, float]:
    """Palettize the UNet in place per ``recipe`` (module name -> :class:`Palette` value; 16
    keeps it). Returns the average bits, lookup tables included, over the recipe's layers and
    over every weight of the UNet."""
    modules = dict(unet.named_modules())
    missing = [name for name in recipe if name not in modules]
    if missing:
        raise KeyError(
            f"the recipe names {len(missing)} layers this UNet does not have, e.g. {missing[0]!r}"
        )
    palettes = recipe_palettes(recipe)
    check_groups(unet, palettes)
    bits_total = numel_total = 0.0
    for name, palette in palettes.items():
        module = modules[name]
        n = module.weight.numel()
        bits_total += palette.storage_bits(n, module.weight.shape[0])
        numel_total += n
        if not palette.keep:
            set_weight(module, palette.palettize(get_weight(module)))
    return {
        "recipe_avg_bits": bits_total / numel_total if numel_total else float(KEEP),
        "unet_avg_bits": unet_average_bits(unet, recipe),
    }


def check_groups(unet: Any, palettes: Mapping[str, Palette]) -> None:
    """Every grouped layer's output channels split into whole groups (checked before any work)."""
    modules = dict(unet.named_modules())
    for name, palette in palettes.items():
        channels = int(modules[name].weight.shape[0])
        if not palette.fits(channels):
            raise CompressionError(
                f"recipe: layer {name!r} has {channels} output channels, not a multiple of "
                f"the group size of {palette.key!r}; use a group size dividing {channels}"
            )


def unet_average_bits(unet: Any, recipe: Mapping[str, object]) -> float:
    """Average bits per parameter of the whole UNet, lookup tables included (layers not in the
    recipe stay fp16)."""
    bits = total = 0.0
    names = {name: m for name, m in unet.named_modules()}
    in_recipe = {id(names[n].weight): p for n, p in recipe_palettes(recipe).items() if n in names}
    for p in unet.parameters():
        n = p.numel()
        bits += in_recipe.get(id(p), Palette(KEEP)).storage_bits(n, p.shape[0] if p.dim() else 1)
        total += n
    return bits / total


def uniform_recipe(unet: Any, palette: int | str, min_size: float = UNIFORM_MIN_SIZE) -> Recipe:
    """Every Linear/Conv2d weight above ``min_size`` elements at one palettization; with a
    grouped one, layers whose channels do not split into whole groups stay fp16."""
    p = parse_palette(palette)
    value = p.to_json()
    modules = dict(unet.named_modules())
    return {
        name: value if p.fits(int(modules[name].weight.shape[0])) else KEEP
        for name in candidate_layers(unet, min_size)
    }


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
