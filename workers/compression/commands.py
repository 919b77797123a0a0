"""The ``orchestrate model`` workflows: analyze, recipe, compress, convert, list."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contract.errors import CompressionError
from workers.compression import registry
from workers.compression.analysis import GROUPED, AnalysisPlan, ProbeConfig, analyze, probe_for
from workers.compression.palettize import (
    Recipe,
    denoiser,
    mean,
    parse_palette,
    psnr,
    recipe_minimum_os,
    recipe_palettes,
    uniform_recipe,
)
from workers.compression.recipes import RECIPE_NAME, load_recipe, recipe_for_bits, recipe_for_psnr
from workers.models.families import DIFFUSION_PIPELINES, FLOW, PIPELINES, SD_PIPELINE

FORMATS = ("torch", "coreml")


def _pipeline(model: str, *, families: tuple[str, ...] = PIPELINES) -> Any:
    """``model`` loaded in fp32 for the model commands, refused in one line when its pipeline
    is not one of ``families``: every family for analyze, recipe and a torch compress (a UNet's
    or a flow transformer's layers); SD 1.x/2.x and SDXL for Core ML (Apple's layouts for
    both); the single-file export is SD 1.x/2.x's layout only."""
    import torch

    from workers.backends.diffusers import load_pipeline, model_source, source_family

    source = model_source(model)
    info = source_family(source)
    if info is not None and info.pipeline not in families:
        which = "SD 1.x and 2.x" if families == (SD_PIPELINE,) else "SD 1.x, 2.x and SDXL"
        why = ""
        if info.family.kind == FLOW:
            why = (
                " (Core ML conversion of the SD3/FLUX transformers is not built: "
                "`--format torch` compresses them for the diffusers backend)"
            )
        raise CompressionError(
            f"model {model!r} is {info.family.title} (family {info.family.name}); this "
            f"`orchestrate model` command takes {which} models only{why}"
        )
    return load_pipeline(source, torch.float32)


def analyze_model(
    model: str,
    out: Path,
    *,
    min_size: float,
    resume: bool = True,
    num_recipes: int = 7,
    prompts: int = 4,
    grouped: tuple[str, ...] | None = None,
    threads: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """``grouped``: the grouped-channel candidates (``"4g16"``...) besides the per-tensor
    widths [default: ``analysis.GROUPED``]; ``()`` for none. ``threads``: torch CPU threads
    [default: the model's own, as generation uses (``workers.task.threads_for``)]."""
    palettes = GROUPED if grouped is None else tuple(parse_palette(g, "--grouped") for g in grouped)
    per_tensor = [p.key for p in palettes if not p.grouped]
    if per_tensor:
        raise CompressionError(
            f"--grouped: {per_tensor[0]!r} is one table per tensor (analyzed anyway); give "
            "grouped ones such as '4g16'"
        )
    pipe = _pipeline(model)
    probe = _probe_config(model, prompts, threads)
    plan = AnalysisPlan(
        model=model,
        out=out,
        min_size=min_size,
        grouped=palettes,
        num_recipes=num_recipes,
        probe=probe,
    )
    return analyze(pipe, plan, resume=resume, progress=progress)


def layers_by_palette(recipe: Recipe) -> dict[int | str, int]:
    """How many layers get each palettization, fewest bits first (``{4: 10, "4g16": 3}``)."""
    counts = Counter(p.to_json() for p in recipe_palettes(recipe).values())
    order = sorted(counts, key=lambda v: (parse_palette(v).bits, isinstance(v, str), str(v)))
    return {v: counts[v] for v in order}


def make_recipe(
    analysis_path: Path,
    *,
    bits: float | None = None,
    psnr_floor: float | None = None,
    name: str | None = None,
    grouped: bool = True,
) -> dict[str, Any]:
    """A recipe for a target average width (``bits``, lookup tables included) or a PSNR floor,
    saved into the analysis. ``grouped``: may choose grouped-channel palettization (where the
    analysis measured it); the package then needs macOS 15 / iOS 18."""
    analysis = json.loads(analysis_path.read_text())
    predicted = None
    if bits is not None:
        recipe, avg, predicted = recipe_for_bits(analysis, bits, grouped=grouped)
    elif psnr_floor is not None:
        recipe, avg = recipe_for_psnr(analysis, psnr_floor)
    else:
        raise CompressionError("give --bits or --psnr")
    name = name or f"recipe_{avg:.2f}_bit_mixedpalette"
    if not RECIPE_NAME.match(name):
        raise CompressionError(f"recipe name {name!r}: use letters, digits, '_', '-', '.'")
    analysis.setdefault("recipes", {})[name] = recipe
    analysis.setdefault("orchestrate", {}).setdefault("predicted_psnr", {})[name] = predicted
    tmp = analysis_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(analysis, indent=2))
    tmp.replace(analysis_path)
    return {
        "name": name,
        "avg_bits": avg,
        "predicted_psnr_db": predicted,
        "layers_by_bits": layers_by_palette(recipe),
        "minimum_os": recipe_minimum_os(recipe),
    }


def _choose_recipe(
    pipe: Any, recipe_spec: str | None, bits: int | str | None
) -> tuple[str, Recipe]:
    if recipe_spec:
        return load_recipe(recipe_spec)
    if bits is None:
        raise CompressionError("give --recipe ANALYSIS.json:NAME (or recipe.json) or --bits N")
    palette = parse_palette(bits, "--bits")
    if palette.keep:
        raise CompressionError("--bits 16 leaves the model as it is; give 1, 2, 4, 6, 8 or 4g16")
    name = palette.key if palette.grouped else f"{palette.bits}bit"
    return name, uniform_recipe(denoiser(pipe), palette.to_json())


def _probe_config(model: str, prompts: int, threads: int | None = None) -> ProbeConfig:
    """The probe's first ``prompts`` prompts, on ``threads`` or the model's own thread count
    (``workers.task.threads_for``: 1 for the built-in tiny models, as generation uses)."""
    from workers.task import threads_for

    return ProbeConfig(prompts=ProbeConfig().prompts[:prompts], threads=threads_for(model, threads))


def _probe_psnr(probe: Any, reference: Any) -> float:
    """The probe's output now (its denoiser's weights changed in place) against ``reference``:
    the same inputs, so a flow model's step is the one the reference ran, not one reached
    through the compressed model's own earlier steps."""
    return round(mean(psnr(r, t) for r, t in zip(reference, probe.run(), strict=True)), 2)


def compress_model(
    model: str,
    out: Path,
    *,
    fmt: str,
    recipe_spec: str | None = None,
    bits: int | str | None = None,
    name: str | None = None,
    attention: str = "original",
) -> dict[str, Any]:
    """Apply a recipe (or uniform ``bits``: ``4``, or ``"4g16"`` grouped) and register the
    variant under ``name``. A Core ML folder is converted for the oldest OS the recipe allows
    (macOS 15 / iOS 18 with any grouped layer)."""
    from workers.backends.coreml_folder import UNET
    from workers.compression.coreml import (
        compile_packages,
        convert_pipeline,
        load_package_weights,
        package_megabytes,
        palettize_unet,
    )
    from workers.compression.variants import build_torch_variant, unet_megabytes

    if fmt not in FORMATS:
        raise CompressionError(f"--format must be one of {FORMATS}")
    pipe = _pipeline(model, families=PIPELINES if fmt == "torch" else DIFFUSION_PIPELINES)
    variant, recipe = _choose_recipe(pipe, recipe_spec, bits)
    variant = name or variant
    probe = probe_for(pipe, _probe_config(model, 2))
    reference = probe.run()
    t0 = time.perf_counter()
    if fmt == "torch":
        note = build_torch_variant(pipe, recipe, out, source_model=model, name=variant)
        note["psnr_db"] = _probe_psnr(probe, reference)
        (out / "orchestrate_compression.json").write_text(json.dumps(note, indent=2))
        info = {
            k: note[k]
            for k in ("recipe_avg_bits", "unet_avg_bits", "fp16_mb", "palettized_mb", "psnr_db")
        }
    else:
        from workers.compression.palettize import check_groups, unet_average_bits
        from workers.compression.recipes import average_bits

        check_groups(pipe.unet, recipe_palettes(recipe))  # before the conversion's minutes
        minimum_os = recipe_minimum_os(recipe)
        convert_pipeline(pipe, out, model_version=model, attention=attention, minimum_os=minimum_os)
        fp16_mb = package_megabytes(out / f"{UNET}.mlpackage")
        coreml_bits = palettize_unet(out, pipe.unet, recipe)
        load_package_weights(pipe.unet, out / f"{UNET}.mlpackage")
        sizes = unet_megabytes(pipe.unet, recipe)
        modules = {n: m for n, m in pipe.unet.named_modules() if n in recipe}
        numel = {n: m.weight.numel() for n, m in modules.items()}
        channels = {n: int(m.weight.shape[0]) for n, m in modules.items()}
        info = {
            "recipe_avg_bits": average_bits(recipe, numel, channels),
            "unet_avg_bits": unet_average_bits(pipe.unet, recipe),
            "minimum_os": minimum_os,
            "fp16_mb": fp16_mb,
            "palettized_mb": package_megabytes(out / f"{UNET}.mlpackage"),
            "estimated_mb": sizes["palettized_mb"],
            "psnr_db": _probe_psnr(probe, reference),
            "palettized_layers": len(coreml_bits),
            **compile_packages(out),
        }
    info["seconds"] = round(time.perf_counter() - t0, 1)
    registry.register(
        model,
        variant,
        fmt,
        out,
        avg_bits=info["unet_avg_bits"],
        unet_mb=info["palettized_mb"],
        psnr_db=info["psnr_db"],
        **({"minimum_os": info["minimum_os"]} if "minimum_os" in info else {}),
    )
    return {"variant": variant, "format": fmt, "path": str(out), **info}


def convert_model(
    model: str,
    out: Path,
    *,
    attention: str = "original",
    bits: int | str | None = None,
    recipe_spec: str | None = None,
    latent_size: int | None = None,
    precision: str = "fp16",
) -> dict[str, Any]:
    """Export to Core ML; with ``bits``/``recipe_spec`` the UNet is palettized too."""
    if precision != "fp16" and (bits is not None or recipe_spec is not None):
        raise CompressionError("palettized packages are fp16: drop --precision fp32")
    if bits is not None or recipe_spec is not None:
        return compress_model(
            model, out, fmt="coreml", recipe_spec=recipe_spec, bits=bits, attention=attention
        )
    from workers.backends.coreml_folder import UNET
    from workers.compression.coreml import compile_packages, convert_pipeline, package_megabytes

    t0 = time.perf_counter()
    layout = convert_pipeline(
        _pipeline(model, families=DIFFUSION_PIPELINES),
        out,
        model_version=model,
        attention=attention,
        latent_size=latent_size,
        precision=precision,
    )
    registry.register(
        model, "fp16", "coreml", out, unet_mb=package_megabytes(out / f"{UNET}.mlpackage")
    )
    return {
        "path": str(out),
        "attention": attention,
        "precision": precision,
        "inputs": layout["inputs"],
        **compile_packages(out),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def list_variants() -> list[dict[str, Any]]:
    return sorted(registry.entries(), key=lambda e: (e["model"], e["format"], e["variant"]))


def export_checkpoint_file(model: str, out: Path) -> dict[str, Any]:
    """``model`` (built in, a folder, a hub id in the cache, a compressed variant's folder, a
    checkpoint) as one ``.safetensors`` in the original Stable Diffusion layout."""
    from workers.models.checkpoints import export_checkpoint, family_of

    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"--out must name a .safetensors file, not {out}")
    started = time.perf_counter()
    pipe = _pipeline(model, families=(SD_PIPELINE,))
    family = family_of(pipe)
    path = export_checkpoint(pipe, out, family)
    return {
        "path": str(path),
        "family": family,
        "mb": path.stat().st_size / 1e6,
        "seconds": time.perf_counter() - started,
    }
