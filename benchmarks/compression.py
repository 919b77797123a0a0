"""Model size vs signal integrity for uniform and mixed-bit palettization, the table users know
from Apple's ml-stable-diffusion README.

    python benchmarks/compression.py                 # tiny model: torch and Core ML, measured
    python benchmarks/compression.py --sd15          # + a UNet with SD 1.5's architecture (random
                                                     #   weights, 860M params): torch, measured
    python benchmarks/compression.py --sd15 --sd15-coreml   # + its Core ML packages (slow: ~2 min
                                                     #   to convert, ~4 min per palettized variant)

Columns: variant, average bits per UNet weight, UNet size in MB (Core ML package; torch as
palettized indices + lookup tables), size reduction vs fp16, and the PSNR of the denoising
output (one guided UNet evaluation on fixed prompts, latents and timestep) vs fp16.

Mixed-bit recipes come from a sensitivity analysis. On the tiny model it is the full analysis
(``orchestrate model analyze``). On the SD 1.5 UNet a full analysis takes hours on this CPU,
so its recipes use a cheaper proxy sensitivity (each layer's own weight-space PSNR) with the
same greedy rule; that column says which.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, save

sys.path.insert(0, str(ROOT))

import numpy as np

from workers.compression.analysis import AnalysisPlan, Probe, ProbeConfig, analyze
from workers.compression.palettize import (
    NBITS,
    candidate_layers,
    get_weight,
    mean,
    palettize_array,
    psnr,
    set_weight,
    unet_average_bits,
    uniform_recipe,
)
from workers.compression.recipes import recipe_for_bits
from workers.compression.variants import unet_megabytes

MIXED_TARGETS = (6.5, 4.5, 3.5)


def measure(
    probe: Probe,
    unet: Any,
    originals: dict[str, np.ndarray],
    recipe: dict[str, int],
    reference: np.ndarray,
) -> float:
    modules = dict(unet.named_modules())
    for name, bits in recipe.items():
        if bits != 16:
            set_weight(modules[name], palettize_array(originals[name], bits))
    value = mean(psnr(r, t) for r, t in zip(reference, probe.run(), strict=True))
    for name in recipe:
        set_weight(modules[name], originals[name])
    return value


def proxy_analysis(unet: Any, min_size: float) -> dict[str, Any]:
    """Sensitivity without forward passes: each layer's weight-space PSNR at each width."""
    sizes = candidate_layers(unet, min_size)
    modules = dict(unet.named_modules())
    single: dict[str, dict[str, list[float]]] = {}
    for n in NBITS:
        single[str(n)] = {}
        for name in sizes:
            w = get_weight(modules[name])
            single[str(n)][name] = [psnr(w, palettize_array(w, n))]
    return {"single_layer": single, "orchestrate": {"sizes": sizes}}


def table(
    pipe: Any,
    *,
    label: str,
    recipes: dict[str, dict[str, int]],
    method: str,
    coreml_dir: Path | None,
    probe_cfg: ProbeConfig,
) -> list[dict[str, Any]]:
    unet = pipe.unet
    probe = Probe(pipe, probe_cfg)
    reference = probe.run()
    modules = dict(unet.named_modules())
    names = {n for r in recipes.values() for n in r}
    originals = {n: get_weight(modules[n]) for n in names}
    rows = []
    fp16_pkg = None
    if coreml_dir is not None:
        from workers.compression.coreml import UNET, convert_pipeline, package_megabytes

        t0 = time.perf_counter()
        convert_pipeline(pipe, coreml_dir / "fp16", model_version=label)
        fp16_pkg = package_megabytes(coreml_dir / "fp16" / f"{UNET}.mlpackage")
        print(f"  {label}: Core ML conversion {time.perf_counter() - t0:.0f}s")
    for variant, recipe in {"fp16": {}, **recipes}.items():
        t0 = time.perf_counter()
        sizes = unet_megabytes(unet, recipe)
        value = measure(probe, unet, originals, recipe, reference) if recipe else float("inf")
        pkg = fp16_pkg
        if coreml_dir is not None and recipe:
            from workers.compression.coreml import UNET, package_megabytes, palettize_unet

            folder = coreml_dir / variant
            shutil.copytree(coreml_dir / "fp16", folder)
            palettize_unet(folder, unet, recipe)
            pkg = package_megabytes(folder / f"{UNET}.mlpackage")
            shutil.rmtree(folder)
        rows.append(
            {
                "model": label,
                "variant": variant,
                "method": "-" if variant == "fp16" or "uniform" in variant else method,
                "avg_bits": unet_average_bits(unet, recipe),
                "coreml_mb": pkg,
                "torch_mb": sizes["palettized_mb"],
                "reduction_pct": 100 * (1 - sizes["palettized_mb"] / sizes["fp16_mb"]),
                "psnr_db": value,
                "seconds": time.perf_counter() - t0,
            }
        )
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'model':<8} {'variant':<34} {'recipe from':<16} {'bits':>5} {'Core ML MB':>10} {'torch MB':>9} {'reduction':>9} {'PSNR dB':>8}"
    )
    for r in rows:
        pkg = f"{r['coreml_mb']:.1f}" if r["coreml_mb"] is not None else "-"
        ps = "inf" if r["psnr_db"] == float("inf") else f"{r['psnr_db']:.1f}"
        print(
            f"{r['model']:<8} {r['variant']:<34} {r['method']:<16} {r['avg_bits']:>5.2f} {pkg:>10} {r['torch_mb']:>9.1f} {r['reduction_pct']:>8.1f}% {ps:>8}"
        )


def recipes_from(analysis: dict[str, Any], unet: Any, min_size: float) -> dict[str, dict[str, int]]:
    out = {f"{n}bit (uniform)": uniform_recipe(unet, n, min_size) for n in (8, 6, 4)}
    for target in MIXED_TARGETS:
        recipe, avg, _ = recipe_for_bits(analysis, target)
        out[f"recipe_{avg:.2f}_bit_mixedpalette"] = recipe
    return out


def main() -> None:
    import torch

    from workers.backends.diffusers import load_pipeline, model_source

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sd15", action="store_true")
    ap.add_argument("--sd15-coreml", action="store_true")
    ap.add_argument("--tiny-min-size", type=float, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pipe = load_pipeline(model_source("tiny"), torch.float32)
        cfg = ProbeConfig(prompts=ProbeConfig().prompts[:2])
        t0 = time.perf_counter()
        analysis = analyze(
            pipe,
            AnalysisPlan(
                model="tiny",
                out=tmp / "tiny.json",
                min_size=args.tiny_min_size,
                num_recipes=1,
                probe=cfg,
            ),
            resume=False,
        )
        print(
            f"tiny: analysis of {len(analysis['orchestrate']['sizes'])} layers in {time.perf_counter() - t0:.0f}s"
        )
        rows += table(
            pipe,
            label="tiny",
            recipes=recipes_from(analysis, pipe.unet, args.tiny_min_size),
            method="analysis",
            coreml_dir=tmp / "tiny-coreml",
            probe_cfg=cfg,
        )
        if args.sd15:
            sd = sd15_pipeline(pipe)
            t0 = time.perf_counter()
            proxy = proxy_analysis(sd.unet, 1e5)
            print(
                f"sd15: proxy sensitivity of {len(proxy['orchestrate']['sizes'])} layers in {time.perf_counter() - t0:.0f}s"
            )
            rows += table(
                sd,
                label="sd15",
                recipes=recipes_from(proxy, sd.unet, 1e5),
                method="proxy",
                coreml_dir=tmp / "sd15-coreml" if args.sd15_coreml else None,
                probe_cfg=ProbeConfig(prompts=ProbeConfig().prompts[:1], latent_size=16),
            )
    print()
    print_rows(rows)
    save("compression", {"rows": rows})


def sd15_pipeline(tiny: Any) -> Any:
    """SD 1.5's UNet and text encoder shapes with random weights (no download), and the tiny
    model's tokenizer, VAE and scheduler."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tiny.tokenizer),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=2,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=len(tiny.tokenizer) - 2,
            eos_token_id=len(tiny.tokenizer) - 1,
            pad_token_id=len(tiny.tokenizer) - 1,
        )
    )
    return StableDiffusionPipeline(
        unet=unet.eval(),
        vae=tiny.vae,
        text_encoder=text.eval(),
        tokenizer=tiny.tokenizer,
        scheduler=tiny.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


if __name__ == "__main__":
    main()
