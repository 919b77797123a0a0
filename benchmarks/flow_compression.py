"""Mixed-bit palettization of flow-matching transformers (SD 3/3.5, FLUX.1, FLUX.2 Klein) against
uniform palettization and against INT4 per-block-32 linear quantization (Apple Core AI's 4-bit
preset), at comparable sizes.

    python benchmarks/flow_compression.py [--prompts 8] [--threads 1]

Two parts.

1. Measured, on the built-in tiny flow models (``tiny-sd3``, ``tiny-flux``, ``tiny-flux2``): the
   transformer unquantized (fp32 on the CPU), uniform palettization at 8/6/4/2 bits, ``int4b32``,
   and mixed-bit recipes at about 6.5 / 4.5 / 3.4 / 2.8 bits from a full sensitivity analysis
   (``orchestrate model analyze``: every Linear layer above 1,000 weights, per-tensor widths, the
   probe on two prompts, conditioned as each pipeline conditions its transformer).
   Columns:

   - avg bits: bits per parameter of the whole transformer (lookup tables and block scales
     included; layers a variant leaves alone count as 16).
   - MB: the transformer as stored (fp16 / indices + tables / int4 + fp16 scales), computed.
   - probe PSNR: of the guided velocity, one denoising step's transformer calls on fixed prompts,
     latents and timestep, vs the unquantized transformer (the analysis' own measure).
   - image PSNR: mean over ``--prompts`` prompts of each 64 px image (20 DPM-Solver++ steps,
     guidance 4, seeds 1000 + i, CPU fp32, ``--threads`` threads) against the unquantized model's
     image of the same prompt and seed (identical: 99 dB).

2. Computed, for the full-size transformers (random weights on torch's meta device: shapes
   only): parameters, fp16 GB and the same variants' GB. A mixed recipe's size at ``b`` average
   bits is its candidate layers at ``b`` bits (per-tensor tables included at that average) and
   the rest at 16.

What random weights can say: the tiny models draw noise, not pictures, so the PSNRs say how far
each compression moves *these* networks' outputs, which ranks the schemes' numerical damage at a
given size; they do not say how a trained transformer's quality degrades (which layers of a
trained FLUX are sensitive is a property of its weights: the next issue trains a tiny flow
model to measure it). The full-size rows are sizes only: a sensitivity analysis of a 2-12 B
parameter transformer is hours of GPU time, none of which this machine has.

Not measured: speed (palettized and block-quantized weights are dense in torch here), the text
encoders (T5-XXL is 4.7 B parameters, Qwen3-4B 4 B: they are not compressed by these variants),
Core ML (its conversion of these transformers is not built), GPUs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _architectures import FLOW_TRANSFORMERS
from _common import save

TINY_FLOW = ("tiny-sd3", "tiny-flux", "tiny-flux2")
TRAINED = ("tiny-flow",)  # on request (--models tiny-flow): trained, its images judged
UNIFORM = (8, 6, 4, 2)
MIXED_TARGETS = (6.5, 4.5, 3.4, 2.8)
MIN_SIZE = 1000  # candidate layers of the tiny transformers (their largest have ~4k weights)
PROMPTS = (
    "a red circle on a blue background",
    "two small yellow squares on a green background",
    "a white triangle at the top left on a black background",
    "three large blue circles on a white background",
    "a green square at the bottom right on a red background",
    "one small black triangle on a yellow background",
    "two purple circles on an orange background",
    "a large white square in the center on a gray background",
)


def _block_sizes(net: Any, names: list[str]) -> tuple[float, float]:
    """(MB, average bits) of ``net`` with the named layers INT4 block-32 quantized (a layer
    whose input channels are not in whole blocks stays fp16, as coremltools leaves it)."""
    from workers.compression.variants import block_sizes

    sizes = block_sizes(net, names, 4, 32)
    return sizes["quantized_mb"], sizes["unet_avg_bits"]


def _mixed_size(net: Any, avg: float) -> tuple[float, float]:
    from workers.compression.palettize import UNIFORM_MIN_SIZE, candidate_layers

    candidates = sum(candidate_layers(net, UNIFORM_MIN_SIZE).values())
    total = sum(p.numel() for p in net.parameters())
    bits = candidates * avg + (total - candidates) * 16
    return bits / 8 / 1e6, bits / total


def full_size_rows() -> list[dict[str, Any]]:
    """Sizes of the published transformers under each scheme (meta device: no weights)."""
    import torch

    from workers.compression.palettize import UNIFORM_MIN_SIZE, candidate_layers, uniform_recipe
    from workers.compression.variants import unet_megabytes

    rows = []
    for name, build in FLOW_TRANSFORMERS.items():
        with torch.device("meta"):
            net = build()
        params = sum(p.numel() for p in net.parameters())
        row: dict[str, Any] = {"model": name, "params_b": round(params / 1e9, 2)}
        row["fp16_gb"] = round(params * 2 / 1e9, 2)
        for b in UNIFORM:
            mb = unet_megabytes(net, uniform_recipe(net, b, UNIFORM_MIN_SIZE))["palettized_mb"]
            row[f"{b}bit_gb"] = round(mb / 1e3, 2)
        mb, _ = _block_sizes(net, list(candidate_layers(net, UNIFORM_MIN_SIZE)))
        row["int4b32_gb"] = round(mb / 1e3, 2)
        for avg in MIXED_TARGETS:
            mb, _ = _mixed_size(net, avg)
            row[f"mixed_{avg}_gb"] = round(mb / 1e3, 2)
        rows.append(row)
    return rows


def _images(backend: Any, prompts: list[str]) -> list[np.ndarray]:
    from contract.job import GenerationRequest

    return [
        np.asarray(
            backend.generate(
                GenerationRequest(
                    prompt=p,
                    negative_prompt="",
                    seed=1000 + i,
                    steps=20,
                    guidance_scale=4.0,
                    width=64,
                    height=64,
                    scheduler="dpmpp_2m",
                )
            ).image
        )
        for i, p in enumerate(prompts)
    ]


def _adherence(images: list[np.ndarray], prompts: list[str]) -> float:
    """The judge's adherence of the images to their prompts (a model of the scenes world)."""
    from PIL import Image

    from workers.tiny.judge import adherence, judge

    verdicts = [judge(Image.fromarray(im), p) for im, p in zip(images, prompts, strict=True)]
    return round(adherence(v for v in verdicts if v is not None), 3)


def sensitive_layers(analysis: dict[str, Any], bits: int, n: int = 6) -> list[list[Any]]:
    """The ``n`` layers whose palettization alone at ``bits`` costs the probe most: [name,
    probe PSNR dB]."""
    from workers.compression.palettize import mean

    single = {
        name: values
        for name, values in analysis["single_layer"][str(bits)].items()
        if isinstance(values, list)  # not its "metadata"
    }
    ranked = sorted(single, key=lambda name: mean(single[name]))
    return [[name, round(mean(single[name]), 1)] for name in ranked[:n]]


def _image_psnr(reference: list[np.ndarray], images: list[np.ndarray]) -> float:
    from workers.compression.palettize import psnr

    values = [
        99.0 if np.array_equal(r, t) else psnr(r.astype(np.float64), t.astype(np.float64), cap=99)
        for r, t in zip(reference, images, strict=True)
    ]
    return round(float(np.mean(values)), 1)


def tiny_rows(model: str, prompts: list[str], threads: int) -> dict[str, Any]:
    """Every variant of one tiny flow model, measured in one process on one pipeline."""
    import torch

    from workers.backends.diffusers import DiffusersBackend, load_pipeline, model_source
    from workers.compression.analysis import AnalysisPlan, ProbeConfig, analyze, probe_for
    from workers.compression.palettize import (
        block_quantize_array,
        candidate_layers,
        denoiser,
        get_weight,
        mean,
        psnr,
        recipe_palettes,
        set_weight,
        uniform_recipe,
    )
    from workers.compression.recipes import recipe_for_bits
    from workers.compression.variants import unet_megabytes
    from workers.models import is_tiny

    scored = is_tiny(model)  # draws the scenes world: the judge scores its images
    pipe = load_pipeline(model_source(model), torch.float32)
    net = denoiser(pipe)
    config = ProbeConfig(prompts=ProbeConfig().prompts[:2], threads=threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        plan = AnalysisPlan(
            model=model,
            out=Path(tmp) / "analysis.json",
            min_size=MIN_SIZE,
            grouped=(),
            num_recipes=1,
            probe=config,
        )
        analysis = analyze(pipe, plan, resume=False)
    analysis_s = time.perf_counter() - t0
    backend = DiffusersBackend(model, pipeline=pipe, device="cpu", threads=threads)
    probe = probe_for(backend.pipe, config)
    reference = probe.run()
    modules = dict(net.named_modules())
    names = list(candidate_layers(net, MIN_SIZE))
    originals = {n: get_weight(modules[n]) for n in names}
    baseline = _images(backend, prompts)

    variants: dict[str, Any] = {f"{b}-bit": uniform_recipe(net, b, MIN_SIZE) for b in UNIFORM}
    for target in MIXED_TARGETS:
        recipe, avg, _ = recipe_for_bits(analysis, target, grouped=False)
        variants[f"mixed {avg:.2f}-bit"] = recipe
    variants["int4b32"] = "int4b32"

    rows = [
        {
            "variant": "unquantized",
            "avg_bits": 16.0,
            "mb": round(unet_megabytes(net, {})["fp16_mb"], 3),
            "probe_psnr_db": 120.0,
            "image_psnr_db": 99.0,
            **({"adherence": _adherence(baseline, prompts)} if scored else {}),
        }
    ]
    for name, recipe in variants.items():
        if recipe == "int4b32":
            for n in names:
                set_weight(modules[n], block_quantize_array(originals[n]))
            mb, avg_bits = _block_sizes(net, names)
        else:
            for n, palette in recipe_palettes(recipe).items():
                set_weight(modules[n], palette.palettize(originals[n]))
            sizes = unet_megabytes(net, recipe)
            mb = sizes["palettized_mb"]
            avg_bits = 16 * sizes["palettized_mb"] / sizes["fp16_mb"]
        probe_db = mean(psnr(r, t) for r, t in zip(reference, probe.run(), strict=True))
        images = _images(backend, prompts)
        image_db = _image_psnr(baseline, images)
        for n in names:
            set_weight(modules[n], originals[n])
        rows.append(
            {
                "variant": name,
                "avg_bits": round(avg_bits, 2),
                "mb": round(mb, 3),
                "probe_psnr_db": round(probe_db, 1),
                "image_psnr_db": image_db,
                **({"adherence": _adherence(images, prompts)} if scored else {}),
            }
        )
    return {
        "model": model,
        "analysis_s": round(analysis_s, 1),
        "layers": len(names),
        "sensitive_at_4_bits": sensitive_layers(analysis, 4),
        "sensitive_at_2_bits": sensitive_layers(analysis, 2),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--models",
        default=",".join(TINY_FLOW),
        help=f"of {', '.join(TINY_FLOW + TRAINED)} (tiny-flow: trained, its images judged)",
    )
    parser.add_argument("--name", default="flow_compression", help="benchmarks/results/NAME.json")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in TINY_FLOW + TRAINED]
    if unknown:
        parser.error(f"--models: {', '.join(unknown)} is not one of {TINY_FLOW + TRAINED}")
    prompts = list(PROMPTS[: args.prompts])

    full = full_size_rows()
    print("Full-size transformers (sizes computed from the architectures; GB):")
    keys = ["fp16_gb", *(f"{b}bit_gb" for b in UNIFORM), "int4b32_gb"]
    keys += [f"mixed_{a}_gb" for a in MIXED_TARGETS]
    print(f"  {'model':24} {'params':>7} " + " ".join(f"{k[:-3]:>10}" for k in keys))
    for row in full:
        cells = " ".join(f"{row[k]:>10.2f}" for k in keys)
        print(f"  {row['model']:24} {row['params_b']:>6.2f}B {cells}")

    tiny = []
    for model in models:
        result = tiny_rows(model, prompts, args.threads)
        tiny.append(result)
        print(f"\n{model}: {result['layers']} candidate layers, analysis {result['analysis_s']} s")
        print(
            f"  {'variant':18} {'avg bits':>8} {'MB':>7} {'probe dB':>9} {'image dB':>9}"
            + (" adherence" if "adherence" in result["rows"][0] else "")
        )
        for r in result["rows"]:
            print(
                f"  {r['variant']:18} {r['avg_bits']:>8.2f} {r['mb']:>7.3f} "
                f"{r['probe_psnr_db']:>9.1f} {r['image_psnr_db']:>9.1f}"
                + (f" {r['adherence']:>9.3f}" if "adherence" in r else "")
            )
        for bits in (4, 2):
            worst = ", ".join(f"{n} {db}" for n, db in result[f"sensitive_at_{bits}_bits"])
            print(f"  most sensitive alone at {bits} bits (probe dB): {worst}")

    answer = []
    for result in tiny:
        rows = {r["variant"]: r for r in result["rows"]}
        near4 = min(
            (r for r in result["rows"] if r["variant"].startswith("mixed")),
            key=lambda r: abs(r["avg_bits"] - rows["int4b32"]["avg_bits"]),
        )
        answer.append(
            f"{result['model']}: {near4['variant']} ({near4['avg_bits']} bits) "
            f"{near4['probe_psnr_db']} dB vs 4-bit uniform ({rows['4-bit']['avg_bits']} bits) "
            f"{rows['4-bit']['probe_psnr_db']} dB vs int4b32 ({rows['int4b32']['avg_bits']} bits) "
            f"{rows['int4b32']['probe_psnr_db']} dB (probe)"
        )
    print("\nAt about equal size:\n  " + "\n  ".join(answer))
    save(
        args.name,
        {
            "prompts": len(prompts),
            "threads": args.threads,
            "models": models,
            "full_size": full,
            "tiny": tiny,
            "at_equal_size": answer,
        },
    )


if __name__ == "__main__":
    main()
