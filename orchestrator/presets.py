"""Presets: named bundles of scheduler, steps and quantization from the scenarios of Apple's
Core ML Stable Diffusion recipe. A manifest row (``preset`` column) or a flag (``--preset``)
names one; the row's own columns override it, and every job records the concrete values, so a
preset never has to be looked up again to reproduce an image.

``quantization = mixed`` (the ``batch`` preset) is resolved when the manifest is read: the
mixed-bit recipe variant of the row's model registered on this machine whose average bit width
is nearest 4.5 (``orchestrate model compress --recipe ...`` registers them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from workers.models.families import DIFFUSION, FLOW

MIXED = "mixed"
MIXED_TARGET_BITS = 4.5
_RECIPE_BITS = re.compile(r"^recipe_(\d+(?:\.\d+)?)_bit_mixedpalette$")


@dataclass(frozen=True)
class Preset:
    name: str
    scheduler: str
    steps: int
    quantization: str
    compute_units: str  # advice for Core ML workers (a worker flag, not a job field)
    summary: str
    # Its sampler for a flow-matching model (SD3, FLUX), where the one above is a diffusion one.
    flow_scheduler: str | None = None

    def scheduler_for(self, kind: str) -> str:
        """Its sampler for a model of ``kind`` (``workers.models.families`` DIFFUSION/FLOW)."""
        return self.flow_scheduler if kind == FLOW and self.flow_scheduler else self.scheduler

    def values(self, kind: str = DIFFUSION) -> dict[str, object]:
        """The job fields this preset sets, for a model of ``kind``."""
        return {
            "scheduler": self.scheduler_for(kind),
            "steps": self.steps,
            "quantization": self.quantization,
        }


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "realtime",
            "dpmpp_2m",
            15,
            "4bit",
            "CPU_AND_GPU",
            "fastest: DPM-Solver++ 15 steps on 4-bit weights",
        ),
        Preset(
            "mobile",
            "dpmpp_2m",
            20,
            "6bit",
            "CPU_AND_NE",
            "small and low-power: 6-bit weights for the Neural Engine, DPM-Solver++ 20 steps",
        ),
        Preset(
            "batch",
            "dpmpp_2m",
            20,
            MIXED,
            "CPU_AND_NE",
            "overnight throughput: the mixed-bit recipe nearest 4.5 bits, DPM-Solver++ 20 steps",
        ),
        Preset(
            "pro",
            "pndm",
            50,
            "fp16",
            "CPU_AND_GPU",
            "reference quality: unquantized weights, PNDM 50 steps (flow models: their own "
            "FlowMatch Euler)",
            flow_scheduler="flow_euler",
        ),
    )
}
PRESET_NAMES = tuple(PRESETS)


def mixed_variant_names(model: str) -> list[str]:
    """Mixed-bit recipe variants of ``model`` registered on this machine."""
    from workers.compression import registry

    return sorted(
        {
            str(e["variant"])
            for e in registry.entries()
            if e.get("model") == model and _RECIPE_BITS.match(str(e.get("variant", "")))
        }
    )


def nearest_mixed(model: str, names: Callable[[str], list[str]] = mixed_variant_names) -> str:
    """The registered mixed-bit variant of ``model`` nearest 4.5 bits; ValueError naming what
    to do when there is none."""
    found = names(model)
    if not found:
        raise ValueError(
            f"'mixed' needs a mixed-bit recipe variant of model {model!r} on this machine and "
            "there is none (make one with `orchestrate model recipe`, then `orchestrate model "
            "compress --recipe FILE:NAME`), or name a quantization in the row"
        )

    def distance(name: str) -> float:
        match = _RECIPE_BITS.match(name)
        assert match
        return abs(float(match.group(1)) - MIXED_TARGET_BITS)

    return min(found, key=lambda n: (distance(n), n))
