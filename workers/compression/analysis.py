"""Per-layer sensitivity analysis for mixed-bit palettization.

For each candidate layer (Linear/Conv2d weights above a size threshold) and each
palettization (per-tensor widths {1, 2, 4, 6, 8} and a few grouped-channel ones, ``4g16`` and
``2g16`` by default), palettize that layer alone and measure the PSNR of a fixed denoising
output (fixed prompts, seed, latents and timestep; one UNet evaluation with classifier-free
guidance) against the unpalettized model; then palettize cumulatively, least harmful first.
A flow-matching model's transformer (SD3, FLUX.1, FLUX.2 Klein, Z-Image) is analysed the same way,
layer by layer, on the inputs its own pipeline gives it at that step (``FlowProbe``): the
family's text encoders, guidance (stacked, separate calls, or an input of the model), packed
latents and position ids, as generation conditions it.
The JSON has the top-level keys of Apple's pre-analysis (``model_version``, ``single_layer``,
``cumulative``, ``baselines``, ``recipes``), keyed by ``"4"`` per tensor as Apple's and
``"4g16"`` grouped, and is rewritten (atomically) every ``SAVE_EVERY_S`` seconds of measuring
and when the run stops, by an error or Ctrl-C as well, so an interrupted run resumes where it
stopped. A grouped palettization skips layers whose output channels do not split into whole
groups.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import CompressionError
from workers.compression.palettize import (
    APPLE_MIN_SIZE,
    NBITS,
    Palette,
    candidate_layers,
    denoiser,
    get_weight,
    linear_quantize_array,
    mean,
    psnr,
    recipe_palettes,
    set_weight,
    weight_modules,
)

logger = logging.getLogger(__name__)

PROMPTS = (
    "a black and brown dog standing outside a door.",
    "a person on a motorcycle makes a turn on the track.",
    "a white cat sitting under a white umbrella",
    "a cake inside of a pan sitting in an oven.",
)


@dataclass(frozen=True)
class ProbeConfig:
    """What the fixed denoising output is made of (recorded in the analysis JSON)."""

    prompts: tuple[str, ...] = PROMPTS
    seed: int = 0
    guidance_scale: float = 7.5
    latent_size: int | None = None  # None: the UNet's sample_size
    step_of_20: int = 10  # which step of a 20-step DPM-Solver++ schedule gives the timestep
    threads: int = 2


def guided_conditioning(
    pipe: Any, prompts: tuple[str, ...], side: int
) -> tuple[Any, dict[str, Any] | None]:
    """The UNet's conditioning for ``prompts`` with classifier-free guidance, unconditional
    half first: the text context, and for SDXL the added embeddings (pooled text and the size
    ``time_ids`` of a ``side``-pixel image). The negative prompt is empty: SD encodes "";
    SDXL's pipeline gives zeros where its config says so, as generation does."""
    import torch

    from workers.models.families import sdxl_time_ids

    n = len(prompts)
    with torch.inference_mode():
        if getattr(pipe, "text_encoder_2", None) is None:
            cond, uncond = pipe.encode_prompt(list(prompts), "cpu", 1, True, [""] * n)
            return torch.cat([uncond, cond]).float(), None
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompt=list(prompts),
            device="cpu",
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=None,
        )
    ids = torch.from_numpy(sdxl_time_ids(side, side, 2 * n))
    added = {"text_embeds": torch.cat([uncond_pooled, pooled]).float(), "time_ids": ids}
    return torch.cat([uncond, cond]).float(), added


class Probe:
    """A UNet and fixed inputs; ``run()`` gives the guided noise prediction for each prompt."""

    def __init__(self, pipe: Any, config: ProbeConfig) -> None:
        import torch

        from workers.models.schedulers import build_scheduler

        torch.set_num_threads(config.threads)
        self.unet = pipe.unet.to(torch.float32).eval()
        self.config = config
        size = config.latent_size or int(self.unet.config.sample_size)
        self.embeddings, self.added = guided_conditioning(
            pipe, config.prompts, size * int(pipe.vae_scale_factor)
        )
        g = torch.Generator("cpu").manual_seed(config.seed)
        channels = int(self.unet.config.in_channels)
        self.latents = torch.randn((len(config.prompts), channels, size, size), generator=g)
        scheduler = build_scheduler("dpmpp_2m", dict(pipe.scheduler.config))
        scheduler.set_timesteps(20)
        self.timestep = int(scheduler.timesteps[config.step_of_20])

    def run(self) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.cat([self.latents, self.latents])
            out = self.unet(
                x,
                self.timestep,
                encoder_hidden_states=self.embeddings,
                added_cond_kwargs=self.added,
            ).sample
            uncond, cond = out.chunk(2)
            guided = uncond + self.config.guidance_scale * (cond - uncond)
        return guided.numpy().copy()

    def psnr_per_prompt(self, reference: np.ndarray) -> list[float]:
        out = self.run()
        return [round(psnr(r, t), 2) for r, t in zip(reference, out, strict=True)]


class _Captured(Exception):
    """Ends a pipeline run once the probe's step has been seen."""


def _detached(value: Any) -> Any:
    import torch

    if torch.is_tensor(value):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_detached(v) for v in value)
    return value


class FlowProbe:
    """A flow model's transformer and the inputs its own pipeline gives it at one step of a
    20-step DPM-Solver++ run (prompts, seed and guidance of the ``ProbeConfig``); ``run()``
    replays that step's transformer calls and gives the guided velocity for each prompt, as
    generation combines them."""

    def __init__(self, pipe: Any, config: ProbeConfig) -> None:
        import torch

        from workers.backends import flow as flow_family
        from workers.models import families
        from workers.models.schedulers import build_scheduler

        torch.set_num_threads(config.threads)
        self.config = config
        info = families.of_pipeline(pipe)
        self.transformer = pipe.transformer.to(torch.float32).eval()
        scale = info.vae_scale
        side = config.latent_size * scale if config.latent_size else info.native_size[0]
        guided = flow_family.uses_cfg(info, config.guidance_scale)
        # SD3 stacks the unconditional half before the prompts in one call (Z-Image the
        # prompts first, as a list); Klein makes a call for the prompts, then one for the
        # negative; FLUX.1 one call (guidance an input).
        self.layout = (
            "single"
            if not guided
            else "stacked"
            if flow_family.stacked_halves(info, True) == 2
            else "pair"
        )
        self.prompts_first = info.pipeline == families.ZIMAGE_PIPELINE
        calls: list[tuple[Any, Any]] = []
        seen = {"step": 0}

        def capture(_module: Any, args: Any, kwargs: Any) -> None:
            if seen["step"] == config.step_of_20:
                calls.append((_detached(args), _detached(kwargs)))

        pipe_timesteps: list[float] = []

        def on_step_end(_pipe: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            pipe_timesteps.append(float(t))
            seen["step"] = i + 1
            if i >= config.step_of_20:
                raise _Captured
            return kw

        own = pipe.scheduler
        pipe.scheduler = build_scheduler("dpmpp_2m", dict(own.config), families.FLOW)
        handle = self.transformer.register_forward_pre_hook(capture, with_kwargs=True)
        options = flow_family.call_options(
            info, config.guidance_scale, flow_family.max_sequence_length(pipe, info)
        )
        try:
            with torch.inference_mode():
                pipe(
                    prompt=list(config.prompts),
                    num_inference_steps=20,
                    height=side,
                    width=side,
                    generator=torch.Generator("cpu").manual_seed(config.seed),
                    output_type="latent",
                    callback_on_step_end=on_step_end,
                    **options,
                )
        except _Captured:
            pass
        finally:
            handle.remove()
            pipe.scheduler = own  # a variant saved from this pipeline keeps the model's own
        if not calls:
            raise CompressionError("the probe's pipeline run never reached its step")
        self.calls = calls
        # the scheduler's own t of that step (each family scales what it hands its transformer)
        self.timestep = float(pipe_timesteps[config.step_of_20]) if pipe_timesteps else 0.0

    def run(self) -> np.ndarray:
        import torch

        g = self.config.guidance_scale
        with torch.inference_mode():
            outs = []
            for args, kwargs in self.calls:
                out = self.transformer(*args, **kwargs)[0]
                # Z-Image's transformer answers a list, a tensor an image
                outs.append(torch.stack(list(out)) if isinstance(out, list | tuple) else out)
            if self.layout == "stacked":
                uncond, cond = outs[0].chunk(2)
                if self.prompts_first:
                    uncond, cond = cond, uncond
                out = uncond + g * (cond - uncond)
            elif self.layout == "pair":
                out = outs[1] + g * (outs[0] - outs[1])
            else:
                out = outs[0]
        return out.float().numpy().copy()

    def psnr_per_prompt(self, reference: np.ndarray) -> list[float]:
        out = self.run()
        return [round(psnr(r, t), 2) for r, t in zip(reference, out, strict=True)]


def probe_for(pipe: Any, config: ProbeConfig) -> Probe | FlowProbe:
    """The probe of a pipeline's denoiser: its UNet's, or a flow model's transformer's."""
    if getattr(pipe, "unet", None) is not None:
        return Probe(pipe, config)
    return FlowProbe(pipe, config)


def _save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(results, fh, indent=2)
    os.replace(tmp, path)


# Rewriting the JSON after every measurement made a run quadratic in its layer count (28% of
# the tiny-xl analysis's time was json.dump); a kill -9 now loses at most this much measuring.
SAVE_EVERY_S = 10.0


class _Checkpoint:
    """The analysis JSON on disk: ``changed`` after each measurement (saved once the last save
    is ``SAVE_EVERY_S`` old), ``save`` when the run stops."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = time.monotonic()
        self.dirty = False

    def changed(self, results: dict[str, Any]) -> None:
        self.dirty = True
        if time.monotonic() - self.last >= SAVE_EVERY_S:
            self.save(results)

    def save(self, results: dict[str, Any]) -> None:
        if self.dirty:
            _save(results, self.path)
            self.dirty = False
        self.last = time.monotonic()


GROUPED = (Palette(4, 16), Palette(2, 16))  # Apple's grouped 4-bit SDXL example, and 2-bit


@dataclass
class AnalysisPlan:
    model: str
    out: Path
    min_size: float = APPLE_MIN_SIZE
    nbits: tuple[int, ...] = NBITS  # per-tensor widths
    grouped: tuple[Palette, ...] = GROUPED  # grouped-channel candidates (macOS 15 / iOS 18)
    num_recipes: int = 7
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    @property
    def palettes(self) -> list[Palette]:
        for p in self.grouped:
            if not p.grouped:
                raise CompressionError(f"AnalysisPlan.grouped: {p.key!r} is not grouped")
        return [Palette(n) for n in self.nbits] + list(self.grouped)


def analyze(
    pipe: Any,
    plan: AnalysisPlan,
    *,
    resume: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the analysis; the JSON at ``plan.out`` is rewritten every
    ``SAVE_EVERY_S`` seconds and when the run returns or raises."""
    unet = denoiser(pipe)  # a UNet, or a flow model's transformer
    sizes = candidate_layers(unet, plan.min_size)
    if not sizes:
        what = "UNet" if getattr(pipe, "unet", None) is not None else "transformer"
        raise CompressionError(
            f"no Linear/Conv2d weight of this {what} has more than {plan.min_size:g} elements; "
            "lower --min-size (the tiny model's largest weights have ~37k)"
        )
    palettes = plan.palettes
    modules = dict(unet.named_modules())
    channels = {name: int(modules[name].weight.shape[0]) for name in sizes}
    layers = {p.key: [n for n in sizes if p.fits(channels[n])] for p in palettes}
    probe = probe_for(pipe, plan.probe)
    settings = {
        "min_size": plan.min_size,
        "nbits": list(plan.nbits),
        "grouped": [p.key for p in plan.grouped],
        "probe": {
            **asdict(plan.probe),
            "prompts": list(plan.probe.prompts),
            "timestep": probe.timestep,
        },
        "sizes": sizes,
        "channels": channels,
    }
    results: dict[str, Any] = {
        "model_version": plan.model,
        "single_layer": {},
        "cumulative": {},
        "baselines": {},
        "recipes": {},
        "orchestrate": settings,
    }
    if resume and plan.out.is_file():
        previous = json.loads(plan.out.read_text())
        if previous.get("orchestrate", {}).get("sizes") != sizes:
            raise CompressionError(
                f"{plan.out} is an analysis of other layers; remove it or pass --no-resume"
            )
        results.update(previous)
        # an analysis from before grouped palettization gains their settings and channels
        results["orchestrate"] = {**previous["orchestrate"], **settings}
    originals = {name: get_weight(modules[name]) for name in sizes}
    reference = probe.run()
    total = sum(len(names) for names in layers.values()) * 2
    done = sum(
        len([k for k in results[stage].get(p.key, {}) if k != "metadata"])
        for stage in ("single_layer", "cumulative")
        for p in palettes
    )

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    checkpoint = _Checkpoint(plan.out)
    try:
        for palette in palettes:
            key = palette.key
            label = key if palette.grouped else f"{key}-bit"
            meta: dict[str, Any] = {"nbits": palette.bits}
            if palette.grouped:
                meta["group_size"] = palette.group_size
            # 1. Each layer alone
            single = results["single_layer"].setdefault(
                key, {"metadata": {**meta, "cumulative": False}}
            )
            palettized: dict[str, np.ndarray] = {}
            for name in layers[key]:
                if name in single:
                    continue
                palettized[name] = palette.palettize(originals[name])
                set_weight(modules[name], palettized[name])
                single[name] = probe.psnr_per_prompt(reference)
                set_weight(modules[name], originals[name])
                checkpoint.changed(results)
                tick(f"{label} {name}")
            # 2. Cumulatively, least harmful first
            order = sorted(layers[key], key=lambda n: -mean(single[n]))
            cumulative = results["cumulative"].setdefault(
                key,
                {
                    "metadata": {
                        **meta,
                        "cumulative": True,
                        "candidates": order,
                        "sizes": [sizes[n] for n in order],
                    }
                },
            )
            for name in order:
                cached = palettized.get(name)
                set_weight(
                    modules[name],
                    cached if cached is not None else palette.palettize(originals[name]),
                )
                if name in cumulative:
                    continue  # resumed: the weights above are replayed, the PSNR is known
                cumulative[name] = probe.psnr_per_prompt(reference)
                checkpoint.changed(results)
                tick(f"{label} cumulative {name}")
            for name in order:
                set_weight(modules[name], originals[name])

        # 3. Baselines: run-to-run noise floor, uniform 8-bit linear quantization
        if "linear_8bit" not in results["baselines"]:
            results["baselines"]["original"] = mean(probe.psnr_per_prompt(reference))
            saved = {name: get_weight(m) for name, m in weight_modules(unet)}
            for name, m in weight_modules(unet):
                set_weight(m, linear_quantize_array(saved[name], 8))
            results["baselines"]["linear_8bit"] = mean(probe.psnr_per_prompt(reference))
            for name, m in weight_modules(unet):
                set_weight(m, saved[name])
            checkpoint.changed(results)

        # 4. Recipes along decreasing quality, as Apple's script makes them, each measured
        from workers.compression.recipes import recipe_for_psnr

        if not results["recipes"]:
            top = min(results["baselines"]["original"], 100.0) - 1
            floor = results["baselines"]["linear_8bit"] + 5
            recipes, measured = {}, {}  # all or none reach the file (a resume remakes them)
            for threshold in np.linspace(top, min(floor, top), plan.num_recipes):
                recipe, avg = recipe_for_psnr(results, float(threshold))
                name = f"recipe_{avg:.2f}_bit_mixedpalette"
                recipes[name] = recipe
                measured[name] = round(
                    measure_recipe(probe, modules, originals, recipe, reference), 1
                )
            results["recipes"] = recipes
            results["baselines"].update(measured)
            checkpoint.changed(results)
    finally:
        checkpoint.save(results)
    return results


def measure_recipe(
    probe: Probe | FlowProbe,
    modules: dict[str, Any],
    originals: dict[str, np.ndarray],
    recipe: dict[str, Any],
    reference: np.ndarray,
) -> float:
    """End-to-end PSNR of the probe with ``recipe`` applied (weights restored afterwards)."""
    changed = []
    for name, palette in recipe_palettes(recipe).items():
        if not palette.keep:
            set_weight(modules[name], palette.palettize(originals[name]))
            changed.append(name)
    value = mean(probe.psnr_per_prompt(reference))
    for name in changed:
        set_weight(modules[name], originals[name])
    return value
