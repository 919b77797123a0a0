"""Recipes from an analysis: per-layer bits for a target average width or a PSNR floor.

A recipe maps torch module names of the UNet to bits (16 keeps the layer in fp16), the format
Apple's pre-analysis writes; a recipe from Apple's script is used as it is.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from orchestrator.errors import CompressionError
from workers.compression.palettize import KEEP, NBITS, mean

RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")


def _sizes(analysis: dict[str, Any]) -> dict[str, int]:
    if "orchestrate" in analysis:
        return {k: int(v) for k, v in analysis["orchestrate"]["sizes"].items()}
    # Apple's JSON keeps sizes in the cumulative metadata
    meta = analysis["cumulative"][str(NBITS[0])]["metadata"]
    return dict(zip(meta["candidates"], meta["sizes"], strict=True))


def average_bits(recipe: dict[str, int], sizes: dict[str, int]) -> float:
    total = sum(sizes[n] for n in recipe)
    return sum(bits * sizes[n] for n, bits in recipe.items()) / total


def recipe_for_psnr(analysis: dict[str, Any], floor: float) -> tuple[dict[str, int], float]:
    """Apple's rule: each layer gets the fewest bits whose cumulative PSNR stays above
    ``floor`` (16 when none does). Returns the recipe and its average bits."""
    sizes = _sizes(analysis)
    recipe = {}
    for name in sizes:
        recipe[name] = KEEP
        for nbits in NBITS:
            run = analysis["cumulative"].get(str(nbits), {})
            if name in run and mean(run[name]) > floor:
                recipe[name] = nbits
                break
    return recipe, average_bits(recipe, sizes)


def recipe_for_bits(analysis: dict[str, Any], target: float) -> tuple[dict[str, int], float, float]:
    """Lowest predicted harm for an average of at most ``target`` bits.

    Quantization noise of separate layers adds up roughly in power, so each step down
    (16 -> 8 -> 6 -> 4 -> 2 -> 1) of a layer costs 10^(-PSNR/10) of its single-layer result.
    Greedily take the step with the least added noise per bit saved until the target is met.
    Returns the recipe, its average bits and the predicted end-to-end PSNR.
    """
    sizes = _sizes(analysis)
    ladder = [KEEP, *sorted(NBITS, reverse=True)]

    def noise(name: str, bits: int) -> float:
        if bits == KEEP:
            return 0.0
        return 10 ** (-mean(analysis["single_layer"][str(bits)][name]) / 10)

    recipe = dict.fromkeys(sizes, KEEP)
    total = sum(sizes.values())
    budget = target * total
    used = KEEP * total
    while used > budget:
        best = None
        for name, bits in recipe.items():
            i = ladder.index(bits)
            if i + 1 == len(ladder):
                continue
            nxt = ladder[i + 1]
            saved = (bits - nxt) * sizes[name]
            cost = (noise(name, nxt) - noise(name, bits)) / saved
            if best is None or cost < best[0]:
                best = (cost, name, nxt, saved)
        if best is None:
            break
        _, name, nxt, saved = best
        recipe[name] = nxt
        used -= saved
    total_noise = sum(noise(n, b) for n, b in recipe.items())
    predicted = 10 * math.log10(1 / total_noise) if total_noise > 0 else float("inf")
    return recipe, average_bits(recipe, sizes), predicted


def load_recipe(spec: str) -> tuple[str, dict[str, int]]:
    """``analysis.json:NAME`` (a recipe in an analysis, ours or Apple's) or ``recipe.json``
    (a plain mapping of module name to bits). Returns (name, recipe)."""
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
    if not isinstance(recipe, dict) or not all(isinstance(v, int) for v in recipe.values()):
        raise CompressionError(f"{spec} is not a recipe (a mapping of layer name to bits)")
    bad = {k: v for k, v in recipe.items() if v not in (*NBITS, KEEP)}
    if bad:
        k, v = next(iter(bad.items()))
        raise CompressionError(
            f"{spec}: layer {k!r} has {v} bits; allowed: {', '.join(map(str, (*NBITS, KEEP)))}"
        )
    return name, recipe
