"""Model size vs signal integrity and prompt adherence for uniform and mixed-bit palettization,
the table users know from Apple's ml-stable-diffusion README.

    python benchmarks/compression.py [--model tiny] [--prompts 60]   # torch and Core ML, measured
    python benchmarks/compression.py --no-coreml     # without the Core ML column (faster)
    python benchmarks/compression.py --sd15          # + a UNet with SD 1.5's architecture (random
                                                     #   weights, 860M params): torch, measured
    python benchmarks/compression.py --ane           # split_einsum_v2 vs the diffusers UNet (fp32)
    python benchmarks/compression.py --sd15 --sd15-coreml   # + its Core ML packages (slow: ~2 min
                                                     #   to convert, ~4 min per palettized variant)
    python benchmarks/compression.py --grouped-only --sd15  # only the grouped-channel comparison
                                                     #   (below), merged into the existing JSON

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
  the images of the held-out prompts (``workers.tiny.judge``; image i with seed 1000 + i), made with
  the palettized UNet (palettized in place in the worker's own backend, the weights
  ``orchestrate model compress --format torch`` would save) at 64 px, 20 DPM-Solver++ steps,
  guidance 7.5, CPU fp32, the model's default thread count (``--threads``; 1 for the built-in
  tiny models). It measures whether the compressed model still draws what
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

Grouped-channel comparison (the JSON's ``grouped`` section; every run makes it): per-tensor
lookup tables against grouped ones (``4g16``: one fp16 table per 16 output channels,
coremltools' ``per_grouped_channel``, macOS 15 / iOS 18), all measured in the same run with the
same accounting: uniform 4-bit vs uniform 4g16, and mixed-bit recipes for the same target
average (lookup tables included) from the same analysis, once with per-tensor options only and
once allowed 4g16/2g16 as well. On the tiny model, the full analysis; on the SD 1.5 UNet, the
weight-space proxy with options 8/6/4/2 bits and 4g16/2g16 (a 1-bit table is never worth it at
these targets), whose 4-bit and 4g16 passes double as the uniform rows (a run without
``--sd15`` keeps the SD 1.5 rows of the results it replaces, with when they were measured: they
use a UNet of their own random weights, which no change to the tiny model moves). Apple's docs give an
SDXL UNet at 1.21 GB grouped 4-bit (group 16) against 1.46 GB for the per-tensor 4.5-bit
recipe, with no quality figure: the PSNR columns here are that figure for our models.

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
from _common import RESULTS, ROOT, machine, save

sys.path.insert(0, str(ROOT))

import numpy as np

from workers.compression.analysis import AnalysisPlan, Probe, ProbeConfig, analyze
from workers.compression.commands import layers_by_palette
from workers.compression.palettize import (
    NBITS,
    Palette,
    Recipe,
    candidate_layers,
    get_weight,
    mean,
    psnr,
    recipe_minimum_os,
    recipe_palettes,
    set_weight,
    unet_average_bits,
    uniform_recipe,
)
from workers.compression.recipes import recipe_for_bits
from workers.compression.variants import unet_megabytes

UNIFORM_BITS = (8, 6, 4, 2)
MIXED_TARGETS = (6.5, 4.5, 3.4, 2.8)
GROUPED_TARGETS = (4.5, 3.4, 2.8)  # tiny: per-tensor vs grouped mixed-bit at these averages
SD15_GROUPED_TARGETS = (4.5,)  # Apple's 4.5-bit recipe (each SD 1.5 pass takes minutes here)
PER_TENSOR_OPTIONS = tuple(Palette(n) for n in NBITS)
SD15_PROXY_OPTIONS = (
    Palette(8),
    Palette(6),
    Palette(4),
    Palette(2),
    Palette(4, 16),
    Palette(2, 16),
)
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
    from workers.tiny.judge import HELD_OUT_PROMPTS
    from workers.tiny.scenes import sample_scene

    rng = np.random.default_rng(0)
    out: list[str] = []
    while len(out) < n:
        prompt = sample_scene(rng).prompt
        if prompt not in HELD_OUT_PROMPTS and prompt not in out:
            out.append(prompt)
    return tuple(out)


@contextmanager
def palettized(unet: Any, originals: dict[str, np.ndarray], recipe: Recipe) -> Iterator[None]:
    """The UNet palettized per ``recipe`` in place for the ``with`` body, then restored."""
    modules = dict(unet.named_modules())
    try:
        for name, palette in recipe_palettes(recipe).items():
            if not palette.keep:
                set_weight(modules[name], palette.palettize(originals[name]))
        yield
    finally:
        for name in recipe:
            set_weight(modules[name], originals[name])


def judged_images(backend: Any, prompts: list[str]) -> Any:
    """The held-out prompts' images and the judge's verdicts (a ``workers.tiny.evaluation.Evaluation``)."""
    from workers.tiny.evaluation import evaluate

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


def proxy_analysis(
    unet: Any,
    min_size: float,
    options: tuple[Palette, ...] = PER_TENSOR_OPTIONS,
    uniform: Any = None,
) -> dict[str, Any]:
    """Sensitivity without forward passes: each layer's weight-space PSNR at each palettization
    (grouped ones only where the channels split into whole groups). With ``uniform`` (a
    function of an option's key), each pass leaves every layer palettized while ``uniform``
    runs, then restores them: the pass is also that option's uniform variant."""
    sizes = candidate_layers(unet, min_size)
    modules = dict(unet.named_modules())
    channels = {name: int(modules[name].weight.shape[0]) for name in sizes}
    single: dict[str, dict[str, list[float]]] = {}
    uniform_out: dict[str, Any] = {}
    for p in options:
        single[p.key] = {}
        originals = {}
        for name in sizes:
            if not p.fits(channels[name]):
                continue
            w = get_weight(modules[name])
            dense = p.palettize(w)
            single[p.key][name] = [psnr(w, dense)]
            if uniform is not None:
                originals[name] = w
                set_weight(modules[name], dense)
        if uniform is not None:
            uniform_out[p.key] = uniform(p.key)
            for name, w in originals.items():
                set_weight(modules[name], w)
    return {
        "single_layer": single,
        "orchestrate": {"sizes": sizes, "channels": channels},
        "uniform": uniform_out,
    }


def table(
    pipe: Any,
    *,
    label: str,
    recipes: dict[str, Recipe],
    method: str,
    coreml_dir: Path | None,
    probe_cfg: ProbeConfig,
    backend: Any = None,
    prompts: list[str] | None = None,
    known_psnr: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per variant. With ``backend`` (whose pipeline is ``pipe``) and ``prompts``, each
    variant also generates the prompts' images for adherence and image PSNR. ``known_psnr``:
    variants whose probe PSNR was measured already (not palettized again here)."""
    known_psnr = known_psnr or {}
    unet = pipe.unet
    probe = Probe(pipe, probe_cfg)
    reference = probe.run()
    modules = dict(unet.named_modules())
    names = {n for v, r in recipes.items() if v not in known_psnr for n in r}
    originals = {n: get_weight(modules[n]) for n in names}
    rows = []
    fp16_pkg = None
    fp16_images: list[np.ndarray] = []
    fp16_eval: Any = None
    if coreml_dir is not None:
        from workers.backends.coreml_folder import UNET
        from workers.compression.coreml import package_megabytes

        fp16_pkg = package_megabytes(
            coreml_base(pipe, coreml_dir, label, "macOS13") / f"{UNET}.mlpackage"
        )
    for variant, recipe in {"fp16": {}, **recipes}.items():
        t0 = time.perf_counter()
        sizes = unet_megabytes(unet, recipe)
        minimum_os = recipe_minimum_os(recipe)
        grouped = minimum_os != "macOS13"
        judged: dict[str, Any] = {
            "adherence": None,
            "adherence_vs_fp16": None,
            "adherence_vs_fp16_interval_95": None,
            "accuracy": None,
            "image_psnr_db": None,
        }
        with palettized(unet, originals, {} if variant in known_psnr else recipe):
            if variant in known_psnr:
                value = known_psnr[variant]
            elif recipe:
                value = mean(psnr(r, t) for r, t in zip(reference, probe.run(), strict=True))
            else:
                value = float("inf")
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
            from workers.backends.coreml_folder import UNET
            from workers.compression.coreml import package_megabytes, palettize_unet

            folder = coreml_dir / variant
            shutil.copytree(coreml_base(pipe, coreml_dir, label, minimum_os), folder)
            palettize_unet(folder, unet, recipe)
            pkg = package_megabytes(folder / f"{UNET}.mlpackage")
            shutil.rmtree(folder)
        rows.append(
            {
                "model": label,
                "variant": variant,
                "method": "-" if variant == "fp16" or "uniform" in variant else method,
                "tables": "-" if not recipe else "grouped" if grouped else "per tensor",
                "layers_by_palettization": {
                    str(k): v for k, v in layers_by_palette(recipe).items()
                },
                "minimum_os": minimum_os if recipe else "macOS13",
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


def coreml_base(pipe: Any, coreml_dir: Path, label: str, minimum_os: str) -> Path:
    """The unpalettized Core ML folder for ``minimum_os``, converted on first use (grouped
    tables need a macOS 15 program; the per-tensor rows keep Apple's macOS 13 one)."""
    from workers.compression.coreml import convert_pipeline

    folder = coreml_dir / f"fp16-{minimum_os}"
    if not folder.exists():
        t0 = time.perf_counter()
        convert_pipeline(pipe, folder, model_version=label, minimum_os=minimum_os)
        print(f"  {label}: Core ML conversion ({minimum_os}) {time.perf_counter() - t0:.0f}s")
    return folder


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'model':<8} {'variant':<42} {'recipe from':<11} {'tables':<10} {'bits':>5} {'Core ML MB':>10} "
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
            f"{r['model']:<8} {r['variant']:<42} {r['method']:<11} {r.get('tables', '-'):<10} {r['avg_bits']:>5.2f} "
            f"{pkg:>10} {r['torch_mb']:>9.1f} {r['reduction_pct']:>8.1f}% {ps:>8} {adh:>9} "
            f"{diff_text:>13} {img_text:>10}"
        )


def recipes_from(analysis: dict[str, Any], unet: Any, min_size: float) -> dict[str, Recipe]:
    """The classic table's variants: uniform and mixed-bit with one table per tensor."""
    out = {f"{n}bit (uniform)": uniform_recipe(unet, n, min_size) for n in UNIFORM_BITS}
    for target in MIXED_TARGETS:
        recipe, avg, _ = recipe_for_bits(analysis, target, grouped=False)
        out[f"recipe_{avg:.2f}_bit_mixedpalette"] = recipe
    return out


def grouped_recipes_from(
    analysis: dict[str, Any], unet: Any, min_size: float, targets: tuple[float, ...]
) -> dict[str, Recipe]:
    """The grouped comparison's variants: uniform 4-bit per tensor and 4g16, then for each
    target a per-tensor-only recipe and one that may choose grouped tables."""
    out = {
        "4bit (uniform)": uniform_recipe(unet, 4, min_size),
        "4g16 (uniform, grouped)": uniform_recipe(unet, "4g16", min_size),
    }
    for target in targets:
        per_tensor, avg, _ = recipe_for_bits(analysis, target, grouped=False)
        out[f"mixed {target} per tensor: {avg:.2f} bit"] = per_tensor
        grouped, gavg, _ = recipe_for_bits(analysis, target, grouped=True)
        out[f"mixed {target} grouped: {gavg:.2f} bit"] = grouped
    return out


def keep_earlier_sd15(grouped: dict[str, Any]) -> dict[str, Any]:
    """``grouped`` with the SD 1.5 grouped rows of the results it replaces (a run without
    ``--sd15``): they measure a UNet with its own random weights (a guided UNet evaluation, no
    VAE, no judge), which no change of the tiny model moves; they say when they were measured."""
    path = RESULTS / "compression.json"
    earlier = json.loads(path.read_text()).get("grouped") or {} if path.is_file() else {}
    rows = [r for r in earlier.get("rows", []) if r.get("model") == "sd15"]
    if not rows:
        return grouped
    return {
        **grouped,
        "sd15_targets": earlier.get("sd15_targets"),
        "sd15_proxy_options": earlier.get("sd15_proxy_options"),
        "sd15_rows_measured": earlier.get("sd15_rows_measured") or earlier.get("machine"),
        "rows": [*grouped["rows"], *rows],
    }


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
    from workers.tiny.judge import HELD_OUT_PROMPTS

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
    ap.add_argument(
        "--threads", type=int, help="torch threads (default: the model's, as a worker's)"
    )
    ap.add_argument("--sd15", action="store_true")
    ap.add_argument("--sd15-coreml", action="store_true")
    ap.add_argument("--tiny-min-size", type=float, default=1000)
    ap.add_argument(
        "--ane",
        action="store_true",
        help="only the split_einsum_v2 equivalence rows (tiny, tiny-xl, SD 1.5 architecture)",
    )
    ap.add_argument(
        "--grouped-only",
        action="store_true",
        help="only the grouped-channel comparison; its section replaces the one in the "
        "existing results JSON, whose other figures are kept",
    )
    args = ap.parse_args()
    from workers.task import threads_for

    threads = threads_for(args.model, args.threads)
    torch.set_num_threads(threads)
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
    # The worker's backend on the CPU (fp32, the model's threads): its pipeline is the one analysed and
    # palettized in place, so each variant's images are made by the palettized UNet.
    backend = DiffusersBackend(args.model, device="cpu", threads=threads)
    pipe = backend.pipe
    rows: list[dict[str, Any]] = []
    grouped_rows: list[dict[str, Any]] = []
    cfg = ProbeConfig(prompts=probe_prompts(2))
    sd15_cfg = ProbeConfig(prompts=ProbeConfig().prompts[:1], latent_size=16)
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
        tiny_coreml = None if args.no_coreml else tmp / "tiny-coreml"
        if not args.grouped_only:
            rows += table(
                pipe,
                label=label,
                recipes=recipes_from(analysis, pipe.unet, args.tiny_min_size),
                method="analysis",
                coreml_dir=tiny_coreml,
                probe_cfg=cfg,
                backend=backend,
                prompts=prompts,
            )
        grouped_rows += table(
            pipe,
            label=label,
            recipes=grouped_recipes_from(analysis, pipe.unet, args.tiny_min_size, GROUPED_TARGETS),
            method="analysis",
            coreml_dir=tiny_coreml,
            probe_cfg=cfg,
            backend=backend,
            prompts=prompts,
        )
        if args.sd15:
            sd = sd15_pipeline(pipe)
            sd15_coreml = tmp / "sd15-coreml" if args.sd15_coreml else None
            if not args.grouped_only:
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
                    coreml_dir=sd15_coreml,
                    probe_cfg=sd15_cfg,
                )
            grouped_rows += sd15_grouped_rows(sd, sd15_cfg, sd15_coreml)
    print(
        f"\nmodel {args.model}; adherence and image PSNR: {len(prompts)} held-out prompts, "
        f"{ADHERENCE_STEPS} {ADHERENCE_SCHEDULER} steps, 64 px, CPU fp32, {threads} threads; "
        f"PSNR dB: one guided UNet evaluation vs the unquantized UNet"
    )
    if rows:
        print_rows(rows)
    print(
        "\nGrouped-channel lookup tables (4g16: one per 16 output channels, macOS 15 / iOS 18) "
        "vs one per tensor; bits and MB count every table:"
    )
    print_rows(grouped_rows)
    grouped = {
        "machine": machine(),
        "tiny_targets": list(GROUPED_TARGETS),
        "sd15_targets": list(SD15_GROUPED_TARGETS) if args.sd15 else None,
        "sd15_proxy_options": [p.key for p in SD15_PROXY_OPTIONS] if args.sd15 else None,
        "note": "per-tensor and grouped variants measured in the same run; avg bits and torch "
        "MB include every fp16 lookup table; tiny recipes from the full analysis (per-tensor "
        "1/2/4/6/8 and 4g16/2g16), SD 1.5 recipes from the weight-space proxy",
        "rows": grouped_rows,
    }
    if not args.sd15:
        grouped = keep_earlier_sd15(grouped)
    if args.grouped_only:
        existing = json.loads((RESULTS / "compression.json").read_text())
        existing.pop("machine", None)
        save("compression", {**existing, "grouped": grouped})
        return
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
                "threads": threads,
            },
            "probe_prompts": list(cfg.prompts),
            "mixed_targets": list(MIXED_TARGETS),
            "rows": rows,
            "warning": warning,
            "random_weights": random_weights,
            "grouped": grouped,
        },
    )


def sd15_grouped_rows(sd: Any, cfg: ProbeConfig, coreml_dir: Path | None) -> list[dict[str, Any]]:
    """The grouped comparison on the SD 1.5 UNet: a proxy analysis whose 4-bit and 4g16 passes
    are measured as the uniform variants (each pass palettizes 860M weights: minutes here)."""
    probe = Probe(sd, cfg)
    reference = probe.run()

    def uniform(key: str) -> float | None:
        if key not in ("4", "4g16"):
            return None
        return mean(psnr(r, t) for r, t in zip(reference, probe.run(), strict=True))

    t0 = time.perf_counter()
    proxy = proxy_analysis(sd.unet, 1e5, SD15_PROXY_OPTIONS, uniform=uniform)
    print(
        f"sd15: proxy sensitivity ({', '.join(p.key for p in SD15_PROXY_OPTIONS)}) of "
        f"{len(proxy['orchestrate']['sizes'])} layers in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    known = {
        "4bit (uniform)": proxy["uniform"]["4"],
        "4g16 (uniform, grouped)": proxy["uniform"]["4g16"],
    }
    return table(
        sd,
        label="sd15",
        recipes=grouped_recipes_from(proxy, sd.unet, 1e5, SD15_GROUPED_TARGETS),
        method="proxy",
        coreml_dir=coreml_dir,
        probe_cfg=cfg,
        known_psnr=known,
    )


if __name__ == "__main__":
    main()
