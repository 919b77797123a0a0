"""``orchestrate model``: mixed-bit palettization and Core ML export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from contract.errors import UsageError
from orchestrator.cli.common import main, option, threads_option
from orchestrator.extras import require as require_extra


@main.group()
def model() -> None:
    """Analyze, compress and convert models (mixed-bit palettization, Core ML)."""


def _usage(fn: Any) -> Any:
    """Turn the compression library's input errors into clean CLI errors."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, KeyError) as exc:
            raise UsageError(str(exc).strip("'\"")) from None

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


@model.command("analyze")
@option("--model", "model_name", required=True, help="'tiny', a diffusers folder, or a hub id.")
@option(
    "--out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Analysis JSON (rewritten after every layer).",
)
@option("--resume/--no-resume", default=True, help="Continue an interrupted analysis in --out.")
@option(
    "--min-size",
    type=float,
    default=1e5,
    help="Candidate layers have more weight elements than this (Apple: 1e5; the tiny model needs ~1e3).",
)
@option(
    "--num-recipes",
    type=click.IntRange(1, 20),
    default=7,
    help="Recipes to build along decreasing PSNR.",
)
@option("--prompts", type=click.IntRange(1, 4), default=4, help="Fixed prompts in the probe batch.")
@option(
    "--grouped",
    default="4g16,2g16",
    show_default=True,
    help="Grouped-channel candidates, BITSgGROUP comma-separated (4g16: 4-bit, one lookup table "
    "per 16 output channels; packages using them need macOS 15 / iOS 18); '' for none.",
)
@threads_option()
@_usage
def analyze_cmd(
    model_name: str,
    out: str,
    resume: bool,
    min_size: float,
    num_recipes: int,
    prompts: int,
    grouped: str,
    threads: int | None,
) -> None:
    """Per-layer sensitivity of the UNet (or a flow model's transformer) to 1/2/4/6/8-bit and
    grouped-channel palettization (hours on a real model)."""
    require_extra("diffusers")
    from orchestrator.progress import Bar
    from workers.compression.commands import analyze_model

    bar = Bar("analyze", unit="runs")

    def progress(done: int, total: int, what: str) -> None:
        bar.update(done, total, what[-50:])

    try:
        result = analyze_model(
            model_name,
            Path(out),
            min_size=min_size,
            resume=resume,
            num_recipes=num_recipes,
            prompts=prompts,
            grouped=tuple(g.strip() for g in grouped.split(",") if g.strip()),
            threads=threads,
            progress=progress,
        )
    finally:
        bar.close()
    b = result["baselines"]
    click.echo(
        f"{len(result['orchestrate']['sizes'])} layers analyzed; linear 8-bit baseline {b['linear_8bit']:.1f} dB; written to {out}"
    )
    for name in result["recipes"]:
        click.echo(f"  {name}: {b.get(name, float('nan')):.1f} dB")


@model.command("recipe")
@click.argument("analysis", type=click.Path(exists=True, dir_okay=False))
@option(
    "--bits",
    type=click.FloatRange(1, 16),
    default=None,
    help="Target average bits over the analyzed layers.",
)
@option(
    "--psnr",
    "psnr_floor",
    type=float,
    default=None,
    help="Per-layer PSNR floor in dB (Apple's rule).",
)
@option("--name", default=None, help="Recipe name [default: recipe_<bits>_bit_mixedpalette].")
@option(
    "--grouped/--no-grouped",
    default=True,
    help="With --bits: may choose grouped-channel layers the analysis measured (the Core ML "
    "package then needs macOS 15 / iOS 18); --no-grouped keeps macOS 13.",
)
@_usage
def recipe_cmd(
    analysis: str, bits: float | None, psnr_floor: float | None, name: str | None, grouped: bool
) -> None:
    """Pick per-layer palettization from an analysis and save the recipe into it."""
    require_extra("diffusers")
    from workers.compression.commands import make_recipe

    if (bits is None) == (psnr_floor is None):
        raise UsageError("give exactly one of --bits or --psnr")
    r = make_recipe(Path(analysis), bits=bits, psnr_floor=psnr_floor, name=name, grouped=grouped)
    predicted = f", predicted {r['predicted_psnr_db']:.1f} dB" if r["predicted_psnr_db"] else ""
    click.echo(
        f"{r['name']}: {r['avg_bits']:.2f} bits on average{predicted}; layers by bits {r['layers_by_bits']}; "
        f"Core ML needs {r['minimum_os']}"
    )
    click.echo(f"use it with: --recipe {analysis}:{r['name']}")


@model.command("compress")
@option("--model", "model_name", required=True, help="'tiny', a diffusers folder, or a hub id.")
@option(
    "--recipe",
    "recipe_spec",
    default=None,
    help="ANALYSIS.json:NAME, or a recipe JSON (Apple's format works).",
)
@option(
    "--bits",
    default=None,
    help="Uniform palettization instead of a recipe: 1, 2, 4, 6, 8, or grouped BITSgGROUP "
    "such as 4g16 (Core ML: macOS 15 / iOS 18).",
)
@option(
    "--format",
    "fmt",
    type=click.Choice(["torch", "coreml"]),
    required=True,
    help="torch: a diffusers folder; coreml: .mlpackages.",
)
@option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@option(
    "--name",
    default=None,
    help="Variant name for manifests' quantization column [default: the recipe's].",
)
@option(
    "--attention",
    type=click.Choice(["original", "split_einsum", "split_einsum_v2"]),
    default="original",
    help="Core ML attention form (split_einsum_v2: the Neural Engine layout).",
)
@_usage
def compress_cmd(
    model_name: str,
    recipe_spec: str | None,
    bits: str | None,
    fmt: str,
    out: str,
    name: str | None,
    attention: str,
) -> None:
    """Apply a recipe: a compressed variant the workers can use (registered under its name)."""
    require_extra("coreml" if fmt == "coreml" else "diffusers")
    from workers.compression.commands import compress_model

    r = compress_model(
        model_name,
        Path(out),
        fmt=fmt,
        recipe_spec=recipe_spec,
        bits=bits,
        name=name,
        attention=attention,
    )
    click.echo(
        f"{r['variant']} ({fmt}) in {r['path']}: {r['unet_avg_bits']:.2f} bits/weight on average "
        f"({r['recipe_avg_bits']:.2f} over the recipe's layers), denoiser {r['fp16_mb']:.1f} MB fp16 -> "
        f"{r['palettized_mb']:.1f} MB, denoising output PSNR {r['psnr_db']:.1f} dB vs the original, {r['seconds']:.0f}s"
    )
    click.echo(f"use it in a manifest: quantization = {r['variant']}")


@model.command("export-checkpoint")
@option(
    "--model",
    "model_name",
    required=True,
    help="'tiny', a diffusers folder (a compressed variant's too), a hub id, or a checkpoint.",
)
@option("--out", type=click.Path(dir_okay=False), required=True, help="FILE.safetensors")
@_usage
def export_checkpoint_cmd(model_name: str, out: str) -> None:
    """Write a model as one .safetensors in the original Stable Diffusion layout (what A1111
    and other single-file tools load; a manifest's model column takes it too)."""
    require_extra("diffusers")
    from workers.compression.commands import export_checkpoint_file

    r = export_checkpoint_file(model_name, Path(out))
    family = f", family {r['family']}" if r["family"] else ""
    click.echo(f"{r['path']}: {r['mb']:.1f} MB{family}, {r['seconds']:.1f}s")


@model.command("convert")
@option("--model", "model_name", required=True, help="'tiny', a diffusers folder, or a hub id.")
@option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Output folder (TextEncoder, Unet, VAEDecoder .mlpackage + tokenizer files).",
)
@option(
    "--attention",
    type=click.Choice(["original", "split_einsum", "split_einsum_v2"]),
    default="original",
    help="split_einsum: per-head attention; split_einsum_v2: the UNet's transformer blocks "
    "in the Neural Engine's (B, C, 1, S) layout, for CPU_AND_NE workers.",
)
@option(
    "--bits",
    default=None,
    help="Also palettize the UNet uniformly: 1, 2, 4, 6, 8, or grouped such as 4g16 (the "
    "folder then needs macOS 15 / iOS 18).",
)
@option("--recipe", "recipe_spec", default=None, help="Also palettize the UNet per a recipe.")
@option(
    "--latent-size",
    type=click.IntRange(4, 256),
    default=None,
    help="Latent side (image side / the VAE's factor: 8 for SD) [default: the model's].",
)
@option(
    "--precision",
    type=click.Choice(["fp16", "fp32"]),
    default="fp16",
    help="Weights and compute: fp16 (what Apple ships, for the Neural Engine) or fp32 (the "
    "torch model's own numbers, to check a conversion).",
)
@_usage
def convert_cmd(
    model_name: str,
    out: str,
    attention: str,
    bits: str | None,
    recipe_spec: str | None,
    latent_size: int | None,
    precision: str,
) -> None:
    """Export a model to Core ML .mlpackages (runs on Linux; prediction needs macOS)."""
    require_extra("coreml")
    from workers.compression.commands import convert_model

    r = convert_model(
        model_name,
        Path(out),
        attention=attention,
        bits=bits,
        recipe_spec=recipe_spec,
        latent_size=latent_size,
        precision=precision,
    )
    click.echo(json.dumps(r, indent=2))


@model.command("list")
@option("--json", "as_json", is_flag=True)
def list_cmd(as_json: bool) -> None:
    """Compressed variants registered on this machine, and the recipes they came from."""
    require_extra("diffusers")
    from workers.compression.commands import list_variants

    rows = list_variants()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no variants yet: `orchestrate model compress ...` makes one")
        return
    click.echo(
        f"{'model':<30} {'variant':<32} {'format':<7} {'bits':>5} {'UNet MB':>8} {'PSNR':>6}  path"
    )
    for e in rows:
        bits = f"{e['avg_bits']:.2f}" if e.get("avg_bits") else "16"
        mb = f"{e['unet_mb']:.1f}" if e.get("unet_mb") else "-"
        ps = f"{e['psnr_db']:.1f}" if e.get("psnr_db") else "-"
        click.echo(
            f"{e['model'][:30]:<30} {e['variant'][:32]:<32} {e['format']:<7} {bits:>5} {mb:>8} {ps:>6}  {e['path']}"
        )
