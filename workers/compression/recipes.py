"""Recipes from an analysis: per-layer palettization for a target average width or a PSNR floor.

A recipe maps torch module names of the UNet to a palettization (see
:mod:`workers.compression.palettize`): an int is bits with one lookup table per tensor (16 keeps
the layer in fp16), the format Apple's pre-analysis writes, so a recipe from Apple's script is
used as it is; a string such as ``"4g16"`` is grouped-channel palettization.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contract.errors import CompressionError
from workers.compression.palettize import (
    KEEP,
    NBITS,
    Palette,
    Recipe,
    mean,
    parse_palette,
    recipe_palettes,
)

RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")


def _sizes(analysis: dict[str, Any]) -> dict[str, int]:
    if "orchestrate" in analysis:
        return {k: int(v) for k, v in analysis["orchestrate"]["sizes"].items()}
    # Apple's JSON keeps sizes in the cumulative metadata
    meta = analysis["cumulative"][str(NBITS[0])]["metadata"]
    return dict(zip(meta["candidates"], meta["sizes"], strict=True))


def _channels(analysis: dict[str, Any]) -> dict[str, int] | None:
    """Output channels per layer (grouped tables need them); analyses before grouped
    palettization, and Apple's, do not record them."""
    found = analysis.get("orchestrate", {}).get("channels")
    return {k: int(v) for k, v in found.items()} if found else None


def analysed_palettes(analysis: dict[str, Any], stage: str = "single_layer") -> list[Palette]:
    """The palettizations an analysis measured in ``stage``, fewest bits first."""
    found = [parse_palette(k, f"analysis {stage} key") for k in analysis.get(stage, {})]
    return sorted(found, key=lambda p: (p.bits, p.grouped, p.group_size or 0))


def average_bits(
    recipe: Mapping[str, object],
    sizes: Mapping[str, int],
    channels: Mapping[str, int] | None = None,
) -> float:
    """Average bits per weight over the recipe's layers, lookup tables included."""
    total = sum(sizes[n] for n in recipe)
    used = sum(
        p.storage_bits(sizes[n], channels.get(n) if channels else None)
        for n, p in recipe_palettes(recipe).items()
    )
    return used / total


def recipe_for_psnr(analysis: dict[str, Any], floor: float) -> tuple[Recipe, float]:
    """Apple's rule: each layer gets the smallest palettization whose cumulative PSNR stays
    above ``floor`` (16 when none does). Returns the recipe and its average bits."""
    sizes = _sizes(analysis)
    channels = _channels(analysis)
    palettes = analysed_palettes(analysis, "cumulative")
    recipe: Recipe = {}
    for name in sizes:
        recipe[name] = KEEP
        width = channels.get(name) if channels else None
        usable = [p for p in palettes if not p.grouped or width is not None]
        for p in sorted(usable, key=lambda p: p.storage_bits(sizes[name], width)):
            run = analysis["cumulative"].get(p.key, {})
            if name in run and mean(run[name]) > floor:
                recipe[name] = p.to_json()
                break
    return recipe, average_bits(recipe, sizes, channels)


def recipe_for_bits(
    analysis: dict[str, Any], target: float, *, grouped: bool = True
) -> tuple[Recipe, float, float]:
    """Lowest predicted harm for an average of at most ``target`` bits (lookup tables included).

    Quantization noise of separate layers adds up roughly in power, so a layer palettized as
    ``p`` costs 10^(-PSNR/10) of its single-layer result. Each layer's options are every
    palettization the analysis measured for it (per tensor and, with ``grouped``, grouped) and
    fp16. Greedily take the move to a smaller option with the least added noise per bit saved
    until the target is met. Returns the recipe, its average bits and the predicted end-to-end
    PSNR.
    """
    sizes = _sizes(analysis)
    channels = _channels(analysis)
    single = analysis["single_layer"]
    palettes = [p for p in analysed_palettes(analysis) if grouped or not p.grouped]
    if any(p.grouped for p in palettes) and channels is None:
        raise CompressionError(
            "the analysis has grouped palettizations but no output channels per layer "
            "('orchestrate.channels'); run `orchestrate model analyze` again"
        )

    def options(name: str) -> list[tuple[float, float, Palette]]:
        """(bits, noise, palette), largest first, each smaller one noisier (the others can
        never be the better choice)."""
        width = channels.get(name) if channels else None
        found = [(float(KEEP * sizes[name]), 0.0, Palette(KEEP))]
        for p in palettes:
            if name in single[p.key]:
                noise = 10 ** (-mean(single[p.key][name]) / 10)
                found.append((p.storage_bits(sizes[name], width), noise, p))
        found.sort(key=lambda o: (-o[0], o[1]))
        kept: list[tuple[float, float, Palette]] = []
        for o in found:
            if kept and o[0] == kept[-1][0]:
                continue  # as large as the one kept, and no less noisy
            while kept and o[1] <= kept[-1][1]:
                kept.pop()  # larger and no less noisy than this one
            kept.append(o)
        return kept

    choices = {name: options(name) for name in sizes}
    at = dict.fromkeys(sizes, 0)  # each layer's index into its options
    total = sum(sizes.values())
    budget = target * total
    used = sum(choices[n][0][0] for n in sizes)
    while used > budget:
        best = None
        for name, i in at.items():
            bits, noise, _ = choices[name][i]
            for j in range(i + 1, len(choices[name])):
                nbits, nnoise, _ = choices[name][j]
                cost = (nnoise - noise) / (bits - nbits)
                if best is None or cost < best[0]:
                    best = (cost, name, j, bits - nbits)
        if best is None:
            break
        _, name, j, saved = best
        at[name] = j
        used -= saved
    recipe: Recipe = {name: choices[name][i][2].to_json() for name, i in at.items()}
    total_noise = sum(choices[name][i][1] for name, i in at.items())
    predicted = 10 * math.log10(1 / total_noise) if total_noise > 0 else float("inf")
    return recipe, average_bits(recipe, sizes, channels), predicted


def load_recipe(spec: str) -> tuple[str, Recipe]:
    """``analysis.json:NAME`` (a recipe in an analysis, ours or Apple's) or ``recipe.json``
    (a plain mapping of module name to palettization). Returns (name, recipe)."""
    path_text, _, name = spec.rpartition(":") if ":" in spec else (spec, "", "")
    path = Path(path_text or spec)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CompressionError(f"cannot read a recipe from {path}: {exc}") from exc
    if name:
        recipes = data.get("recipes", {})
        if name not in recipes:
            known = ", ".join(recipes) or "none"
            raise CompressionError(f"{path} has no recipe {name!r}; it has: {known}")
        recipe = recipes[name]
    else:
        recipe = data
        name = path.stem
    if not isinstance(recipe, dict) or not all(
        isinstance(v, int | str) and not isinstance(v, bool) for v in recipe.values()
    ):
        raise CompressionError(
            f"{spec} is not a recipe (a mapping of layer name to bits, or to '<bits>g<group>')"
        )
    recipe_palettes(recipe, spec)  # every value checked, the first bad one named
    return name, recipe
