"""Model size vs signal integrity and prompt adherence for uniform and mixed-bit palettization,
the table users know from Apple's ml-stable-diffusion README.

    python benchmarks/compression.py [--model tiny] [--prompts 60]   # torch and Core ML, measured
    python benchmarks/compression.py --no-coreml     # without the Core ML column (faster)
    python benchmarks/compression.py --sd15          # + a UNet with SD 1.5's architecture (random
                                                     #   weights, 860M params): torch, measured
    python benchmarks/compression.py --ane           # split_einsum_v2 vs the diffusers UNet (fp32)
    python benchmarks/compression.py --sd15 --sd15-coreml   # + its Core ML packages (slow: ~2 min
                                                     #   to convert, ~4 min per palettized variant)

Rows: the unquantized UNet ("fp16": the product's name for it; on the CPU it runs in fp32),
uniform palettization at 8/6/4/2 bits, and mixed-bit recipes at about 6.5 / 4.5 / 3.4 / 2.8
bits per candidate weight from a sensitivity analysis.

Columns and what they measure:

- avg bits: bits per parameter of the whole UNet (layers left out of a recipe count as 16).
- Core ML MB: the palettized ``Unet.mlpackage`` on disk; torch MB: the UNet as palettized
  indices plus fp16 lookup tables (computed, not a file); reduction: of torch MB vs fp16.
- PSNR dB: of the denoising output, one guided UNet evaluation on fixed prompts, latents and
  timestep, vs the unquantized UNet: the analysis' own measure of signal integrity, no sampler,
  no VAE.
- adherence (tiny/trained model only): the built-in judge's share of stated attributes shown by
  the images of the held-out prompts (``workers.judge``; image i with seed 1000 + i), made with
  the palettized UNet (palettized in place in the worker's own backend, the weights
  ``orchestrate model compress --format torch`` would save) at 64 px, 20 DPM-Solver++ steps,
  guidance 7.5, CPU fp32, 2 threads. It measures whether the compressed model still draws what
  is asked, as the judge reads it; the unquantized row is its baseline, and differences of a few
  hundredths are within the noise of 60 prompts ("vs fp16": the difference and its paired 95%
  interval). Not applicable to the SD 1.5 UNet (random weights, real prompts: no judge), shown
  as n/a.
- image PSNR: mean over the held-out prompts of each final 8-bit image's PSNR (peak 255) vs the
  unquantized model's image of the same prompt and seed (identical images count as 99 dB): how
  far the compression moves the pixels after 20 steps and the VAE.

Mixed-bit recipes come from a sensitivity analysis. On the tiny model it is the full analysis
(``orchestrate model analyze``), probed on two prompts of the scenes world it draws (drawn from
the training distribution, not the held-out ones; the random-weight run used two COCO captions).
On the SD 1.5 UNet a full analysis takes hours on this CPU, so its recipes use a cheaper proxy
sensitivity (each layer's own weight-space PSNR) with the same greedy rule; that column says
which.

Not measured: speed (palettized weights are dense in torch), real SD 1.5 weights, GPUs.
``results/compression_random.json`` keeps the figures of the random-weight tiny model the
trained one replaced; the new JSON carries them as ``random_weights``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _architectures import sd15_pipeline
from _common import RESULTS, ROOT, save

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

UNIFORM_BITS = (8, 6, 4, 2)
MIXED_TARGETS = (6.5, 4.5, 3.4, 2.8)
ADHERENCE_STEPS = 20
ADHERENCE_SCHEDULER = "dpmpp_2m"
PSNR_CAP = 99.0  # what identical images count as
# Below this the unquantized model does not draw its prompts: adherence then shows nothing.
USEFUL_ADHERENCE = 0.5


def image_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two 8-bit images in dB, peak 255; identical images give PSNR_CAP."""
    mse = float(np.mean((a - b) ** 2))
    return PSNR_CAP if mse == 0.0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def probe_prompts(n: int = 2) -> tuple[str, ...]:
    """Prompts of the scenes world for the analysis probe: the first ``n`` drawn from seed 0
    that are not held out (the held-out ones judge the result)."""
    from workers.judge import HELD_OUT_PROMPTS
    from workers.scenes import sample_scene

    rng = np.random.default_rng(0)
    out: list[str] = []
    while len(out) < n:
        prompt = sample_scene(rng).prompt
        if prompt not in HELD_OUT_PROMPTS and prompt not in out:
            out.append(prompt)
    return tuple(out)


@contextmanager
def palettized(
    unet: Any, originals: dict[str, np.ndarray], recipe: dict[str, int]
) -> Iterator[None]:
    """The UNet palettized per ``recipe`` in place for the ``with`` body, then restored."""
    modules = dict(unet.named_modules())
    try:
        for name, bits in recipe.items():
            if bits != 16:
                set_weight(modules[name], palettize_array(originals[name], bits))
        yield
    finally:
        for name in recipe:
            set_weight(modules[name], originals[name])


def judged_images(backend: Any, prompts: list[str]) -> Any:
    """The held-out prompts' images and the judge's verdicts (a ``workers.evaluation.Evaluation``)."""
    from workers.evaluation import evaluate

    return evaluate(backend, prompts, steps=ADHERENCE_STEPS, scheduler=ADHERENCE_SCHEDULER)


def paired_difference(a: Any, b: Any) -> tuple[float, float]:
    """Adherence of evaluation ``a`` minus that of ``b`` (same prompts and seeds) and the
    half-width of its 95% interval, from the per-image differences in attributes shown."""
    stated = sum(len(j.expected) for j in a.judgements)
    diffs = [
        len(ja.right) - len(jb.right) for ja, jb in zip(a.judgements, b.judgements, strict=True)
    ]
    n = len(diffs)
    half = 1.96 * math.sqrt(n * statistics.variance(diffs)) / stated if n > 1 else math.inf
    return sum(diffs) / stated, half


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
    backend: Any = None,
    prompts: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per variant. With ``backend`` (whose pipeline is ``pipe``) and ``prompts``, each
    variant also generates the prompts' images for adherence and image PSNR."""
    unet = pipe.unet
    probe = Probe(pipe, probe_cfg)
    reference = probe.run()
    modules = dict(unet.named_modules())
    names = {n for r in recipes.values() for n in r}
    originals = {n: get_weight(modules[n]) for n in names}
    rows = []
    fp16_pkg = None
    fp16_images: list[np.ndarray] = []
    fp16_eval: Any = None
    if coreml_dir is not None:
        from workers.compression.coreml import UNET, convert_pipeline, package_megabytes

        t0 = time.perf_counter()
        convert_pipeline(pipe, coreml_dir / "fp16", model_version=label)
        fp16_pkg = package_megabytes(coreml_dir / "fp16" / f"{UNET}.mlpackage")
        print(f"  {label}: Core ML conversion {time.perf_counter() - t0:.0f}s", flush=True)
    for variant, recipe in {"fp16": {}, **recipes}.items():
        t0 = time.perf_counter()
        sizes = unet_megabytes(unet, recipe)
        judged: dict[str, Any] = {
            "adherence": None,
            "adherence_vs_fp16": None,
            "adherence_vs_fp16_interval_95": None,
            "accuracy": None,
            "image_psnr_db": None,
        }
        with palettized(unet, originals, recipe):
            value = (
                mean(psnr(r, t) for r, t in zip(reference, probe.run(), strict=True))
                if recipe
                else float("inf")
            )
            if backend is not None and prompts:
                ev = judged_images(backend, prompts)
                images = [pixels(im) for im in ev.images]
                if not recipe:
                    fp16_images, fp16_eval = images, ev
                diff, half = paired_difference(ev, fp16_eval)
                judged = {
                    "adherence": ev.adherence,
                    "adherence_vs_fp16": diff,
                    "adherence_vs_fp16_interval_95": half,
                    "accuracy": ev.accuracy(),
                    "image_psnr_db": statistics.fmean(
                        image_psnr(r, t) for r, t in zip(fp16_images, images, strict=True)
                    ),
                }
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
                **judged,
                "seconds": time.perf_counter() - t0,
            }
        )
        print(f"  {label} {variant}: {time.perf_counter() - t0:.0f}s", flush=True)
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'model':<8} {'variant':<34} {'recipe from':<11} {'bits':>5} {'Core ML MB':>10} "
        f"{'torch MB':>9} {'reduction':>9} {'PSNR dB':>8} {'adherence':>9} {'vs fp16 (95%)':>13} "
        f"{'image PSNR':>10}"
    )
    for r in rows:
        pkg = f"{r['coreml_mb']:.1f}" if r.get("coreml_mb") is not None else "-"
        ps = "inf" if r["psnr_db"] == float("inf") else f"{r['psnr_db']:.1f}"
        adh = f"{r['adherence']:.3f}" if r.get("adherence") is not None else "n/a"
        img = r.get("image_psnr_db")
        img_text = "n/a" if img is None else "identical" if img >= PSNR_CAP else f"{img:.1f}"
        diff = r.get("adherence_vs_fp16")
        if diff is None:
            diff_text = "n/a"
        elif r["variant"] == "fp16":
            diff_text = "-"
        else:
            diff_text = f"{diff:+.3f}+-{r['adherence_vs_fp16_interval_95']:.3f}"
        print(
            f"{r['model']:<8} {r['variant']:<34} {r['method']:<11} {r['avg_bits']:>5.2f} "
            f"{pkg:>10} {r['torch_mb']:>9.1f} {r['reduction_pct']:>8.1f}% {ps:>8} {adh:>9} "
            f"{diff_text:>13} {img_text:>10}"
        )


def recipes_from(analysis: dict[str, Any], unet: Any, min_size: float) -> dict[str, dict[str, int]]:
    out = {f"{n}bit (uniform)": uniform_recipe(unet, n, min_size) for n in UNIFORM_BITS}
    for target in MIXED_TARGETS:
        recipe, avg, _ = recipe_for_bits(analysis, target)
        out[f"recipe_{avg:.2f}_bit_mixedpalette"] = recipe
    return out


def load_random_weights() -> dict[str, Any] | None:
    path = RESULTS / "compression_random.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["note"] = (
        "the built-in tiny model with random weights (before the trained one) and the SD 1.5 "
        "UNet shape with random weights; mixed targets 6.5/4.5/3.5 bits, uniform 8/6/4; the "
        "tiny model's analysis probed with two COCO captions; no adherence"
    )
    return data


def main() -> None:
    import torch

    from workers.backends.diffusers import DiffusersBackend
    from workers.judge import HELD_OUT_PROMPTS

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="tiny", help="the small model to measure (default tiny)")
    ap.add_argument(
        "--prompts",
        type=int,
        default=len(HELD_OUT_PROMPTS),
        help="held-out prompts for adherence (0: leave adherence out)",
    )
    ap.add_argument("--no-coreml", action="store_true", help="leave out the Core ML column")
    ap.add_argument("--sd15", action="store_true")
    ap.add_argument("--sd15-coreml", action="store_true")
    ap.add_argument("--tiny-min-size", type=float, default=1000)
    ap.add_argument(
        "--ane",
        action="store_true",
        help="only the split_einsum_v2 equivalence rows (tiny, tiny-xl, SD 1.5 architecture)",
    )
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.ane:
        from _ane import rows as ane_rows

        from workers.task import PipelineCache

        cache = PipelineCache(device="cpu", threads=2)
        tiny_pipe = cache.get("tiny")[0].pipe  # type: ignore[attr-defined]
        xl_pipe = PipelineCache(device="cpu", threads=2).get("tiny-xl")[0].pipe  # type: ignore[attr-defined]
        equivalence = ane_rows(tiny_pipe, xl_pipe, sd15=True)
        for r in equivalence:
            print(
                f"{r['model']:10s} latent {r['latent']:3d}  {r['transformers_replaced']:2d} blocks  "
                f"{r['psnr_db']:6.1f} dB  max |diff| {r['max_abs_diff']:.2e}"
            )
        save("compression_ane", {"split_einsum_v2_vs_diffusers_fp32": equivalence})
        return
    label = "tiny" if args.model == "tiny" else Path(args.model).name[:8]
    prompts = list(HELD_OUT_PROMPTS[: args.prompts])
    # The worker's backend on the CPU (fp32, 2 threads): its pipeline is the one analysed and
    # palettized in place, so each variant's images are made by the palettized UNet.
    backend = DiffusersBackend(args.model, device="cpu", threads=2)
    pipe = backend.pipe
    rows = []
    cfg = ProbeConfig(prompts=probe_prompts(2))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        analysis = analyze(
            pipe,
            AnalysisPlan(
                model=args.model,
                out=tmp / "tiny.json",
                min_size=args.tiny_min_size,
                num_recipes=1,
                probe=cfg,
            ),
            resume=False,
        )
        print(
            f"{label}: analysis of {len(analysis['orchestrate']['sizes'])} layers in "
            f"{time.perf_counter() - t0:.0f}s",
            flush=True,
        )
        rows += table(
            pipe,
            label=label,
            recipes=recipes_from(analysis, pipe.unet, args.tiny_min_size),
            method="analysis",
            coreml_dir=None if args.no_coreml else tmp / "tiny-coreml",
            probe_cfg=cfg,
            backend=backend,
            prompts=prompts,
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
    print(
        f"\nmodel {args.model}; adherence and image PSNR: {len(prompts)} held-out prompts, "
        f"{ADHERENCE_STEPS} {ADHERENCE_SCHEDULER} steps, 64 px, CPU fp32, 2 threads; "
        f"PSNR dB: one guided UNet evaluation vs the unquantized UNet"
    )
    print_rows(rows)
    warning = None
    base = rows[0].get("adherence")
    if base is not None and base < USEFUL_ADHERENCE:
        warning = (
            f"the unquantized model's own adherence is {base:.3f}, near chance (~0.25): it does "
            "not draw its prompts, so the adherence column cannot show what compression costs"
        )
        print(f"\nWARNING: {warning}")
    random_weights = load_random_weights()
    if random_weights is not None:
        print("\nThe random-weight figures these replace (results/compression_random.json):")
        print_rows(random_weights["rows"])
    save(
        "compression",
        {
            "model": args.model,
            "prompts": len(prompts),
            "adherence_settings": {
                "steps": ADHERENCE_STEPS,
                "scheduler": ADHERENCE_SCHEDULER,
                "size": 64,
                "guidance_scale": 7.5,
                "device": "cpu",
                "dtype": "fp32",
                "threads": 2,
            },
            "probe_prompts": list(cfg.prompts),
            "mixed_targets": list(MIXED_TARGETS),
            "rows": rows,
            "warning": warning,
            "random_weights": random_weights,
        },
    )


if __name__ == "__main__":
    main()
