"""Samplers on the same model, prompts and seeds: prompt adherence, closeness to a converged
image, UNet evaluations and seconds per image.

    python benchmarks/schedulers.py [--model tiny] [--prompts 60] [--size 64] [--threads N]

Rows: DPM-Solver++ (2M) at 10/15/20/25 steps, its Karras-sigma form at 10 and 20, PNDM (PLMS) at 20, 40, 50,
Euler and Euler ancestral at 20, DDIM at 20 and 50, and the reference itself: DPM-Solver++ (2M)
at 100 steps. Every row generates the held-out prompts of ``workers.tiny.judge`` (never trained on;
the first ``--prompts`` of the 60), image ``i`` with seed 1000 + i, guidance 7.5, through the
worker's own backend (``workers.tiny.evaluation.evaluate``, the same call that gives the training
script's held-out figure), on the CPU in fp32 with ``--threads`` torch threads (default: the model's, 1 for tiny).

What each figure measures:

- adherence: the share of the attributes the prompts state (background, colour, shape, count,
  size, position) that the built-in judge (``workers.tiny.judge``) reads back from the images, over
  all images; per attribute in the JSON. It measures whether the model drew what was asked,
  as a classical-vision judge reads 64 px scenes; not beauty, not what a person would say.
  Chance is about 0.25 (measured: renders of other held-out prompts score 0.22-0.30, mean
  0.25); the 60 prompts state 290 attributes, so differences of a few hundredths are within
  noise (the answer below gives the paired 95% interval; the JSON gives it for every row against
  the reference).
- PSNR vs reference: the mean over prompts of each image's PSNR (8-bit RGB, peak 255) against
  the same prompt and seed at 100 DPM-Solver++ steps (identical images count as 99 dB). It says
  how close a sampler gets to the converged solution of the model's ODE; the reference is a
  DPM-Solver++ run, which favours the DPM-Solver++ rows a little (their discretisation errors
  are alike), so "PSNR vs PNDM-50" is given too. Euler ancestral adds fresh noise at every step:
  it converges to another image, so its PSNR is low by construction and says nothing of quality.
- UNet evaluations: per image (two per step with classifier-free guidance; PNDM's first step
  takes two).
- seconds: median over the prompts of one image's generation (text encoding, denoising, VAE
  decoding; not PNG encoding), after one untimed warm-up image per row.

Not measured: real Stable Diffusion models (``--model /path/to/sd15 --size 512 --prompts 10``
gives their timings and PSNR; the judge knows only the scenes world, so adherence means nothing
there), other sizes, GPUs.

``results/schedulers_random.json`` keeps the figures of the random-weight tiny model this
trained one replaced (one prompt, PSNR against PNDM-50); the new JSON carries them as
``random_weights`` and the script prints the two side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT, save

sys.path.insert(0, str(ROOT))

import numpy as np

from workers.task import PipelineCache
from workers.tiny.evaluation import EVAL_SEED, Evaluation, evaluate
from workers.tiny.judge import HELD_OUT_PROMPTS, parse_prompt

REFERENCE = ("dpmpp_2m", 100)
RUNS = (
    ("dpmpp_2m", 10),
    ("dpmpp_2m", 15),
    ("dpmpp_2m", 20),
    ("dpmpp_2m", 25),
    ("dpmpp_2m_karras", 10),
    ("dpmpp_2m_karras", 20),
    ("pndm", 20),
    ("pndm", 40),
    ("pndm", 50),
    ("euler", 20),
    ("euler_a", 20),
    ("ddim", 20),
    ("ddim", 50),
)
PSNR_CAP = 99.0  # what identical images count as
GUIDANCE = 7.5
# Below this the reference does not draw its prompts: the adherence column then means little.
USEFUL_ADHERENCE = 0.5


class Timed:
    """A backend whose ``generate`` calls are timed and whose UNet evaluations are counted."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.seconds: list[float] = []
        self.unet_evaluations: list[int] = []

    def generate(self, request: Any, should_stop: Any = None) -> Any:
        t0 = time.perf_counter()
        out = self.backend.generate(request, should_stop)
        self.seconds.append(time.perf_counter() - t0)
        self.unet_evaluations.append(out.unet_evaluations)
        return out


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def image_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two 8-bit images in dB, peak 255; identical images give PSNR_CAP."""
    mse = float(np.mean((a - b) ** 2))
    return PSNR_CAP if mse == 0.0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def mean_psnr(images: list[np.ndarray], references: list[np.ndarray]) -> float:
    return statistics.fmean(image_psnr(r, t) for r, t in zip(references, images, strict=True))


def paired_difference(a: Evaluation, b: Evaluation) -> tuple[float, float]:
    """Adherence of ``a`` minus that of ``b`` (same prompts and seeds) and the half-width of its
    95% interval, from the per-image differences in attributes shown."""
    stated = sum(len(j.expected) for j in a.judgements)
    diffs = [
        len(ja.right) - len(jb.right) for ja, jb in zip(a.judgements, b.judgements, strict=True)
    ]
    n = len(diffs)
    half = 1.96 * math.sqrt(n * statistics.variance(diffs)) / stated if n > 1 else math.inf
    return sum(diffs) / stated, half


def run(backend: Any, prompts: list[str], scheduler: str, steps: int, size: int) -> dict[str, Any]:
    timed = Timed(backend)
    # One untimed warm-up image (first use of this scheduler and step count)
    evaluate(timed, prompts[:1], steps=steps, scheduler=scheduler, size=size)
    timed.seconds.clear()
    result = evaluate(timed, prompts, steps=steps, scheduler=scheduler, size=size)
    return {
        "evaluation": result,
        "pixels": [pixels(im) for im in result.images],
        "seconds": statistics.median(timed.seconds),
        "unet_evaluations": timed.unet_evaluations[0],
    }


def load_random_weights() -> dict[str, Any] | None:
    path = RESULTS / "schedulers_random.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["note"] = (
        "the built-in tiny model with random weights (before the trained one): one prompt "
        "('a lighthouse on a cliff at dawn, oil painting'), seed 7667, median of 3 runs; "
        "PSNR against PNDM-50's image of the same prompt and seed"
    )
    return data


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=len(HELD_OUT_PROMPTS))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument(
        "--threads", type=int, help="torch threads (default: the model's, as a worker's)"
    )
    ap.add_argument(
        "--name", default="schedulers", help="results file: benchmarks/results/NAME.json"
    )
    args = ap.parse_args()
    prompts = list(HELD_OUT_PROMPTS[: args.prompts])
    assert all(parse_prompt(p) is not None for p in prompts)
    from workers.task import threads_for

    args.threads = threads_for(args.model, args.threads)
    backend, _ = PipelineCache(device="cpu", threads=args.threads).get(args.model)

    t_start = time.perf_counter()
    measured: dict[tuple[str, int], dict[str, Any]] = {}
    for scheduler, steps in (REFERENCE, *RUNS):
        measured[(scheduler, steps)] = run(backend, prompts, scheduler, steps, args.size)
        print(f"  {scheduler} {steps}: done ({time.perf_counter() - t_start:.0f}s)", flush=True)
    ref = measured[REFERENCE]["pixels"]
    pndm = measured[("pndm", 50)]["pixels"]

    rows = []
    for (scheduler, steps), m in measured.items():
        ev: Evaluation = m["evaluation"]
        diff, half = paired_difference(ev, measured[REFERENCE]["evaluation"])
        rows.append(
            {
                "scheduler": scheduler,
                "steps": steps,
                "reference": (scheduler, steps) == REFERENCE,
                "unet_evaluations": m["unet_evaluations"],
                "seconds_per_image": m["seconds"],
                "adherence": ev.adherence,
                "accuracy": ev.accuracy(),
                "adherence_vs_reference": diff,
                "adherence_vs_reference_interval_95": half,
                "psnr_vs_reference_db": mean_psnr(m["pixels"], ref),
                "psnr_vs_pndm50_db": mean_psnr(m["pixels"], pndm),
                "identical_to_reference": sum(
                    bool(np.array_equal(a, b)) for a, b in zip(m["pixels"], ref, strict=True)
                ),
            }
        )

    print(
        f"\nmodel {args.model}, {args.size}x{args.size}, {len(prompts)} held-out prompts "
        f"(seeds {EVAL_SEED}..{EVAL_SEED + len(prompts) - 1}), guidance {GUIDANCE}, CPU fp32, "
        f"{args.threads} torch threads; reference: dpmpp_2m at 100 steps"
    )
    print(
        f"{'scheduler':<16} {'steps':>5} {'UNet evals':>10} {'s/image':>8} {'adherence':>9} "
        f"{'PSNR vs ref':>11} {'PSNR vs PNDM-50':>15}"
    )
    for r in rows:
        name = r["scheduler"] + (" (ref)" if r["reference"] else "")
        print(
            f"{name:<16} {r['steps']:>5} {r['unet_evaluations']:>10} "
            f"{r['seconds_per_image']:>8.3f} {r['adherence']:>9.3f} "
            f"{fmt_db(r['psnr_vs_reference_db']):>11} {fmt_db(r['psnr_vs_pndm50_db']):>15}"
        )
    print("(PSNR: mean over prompts, dB, 8-bit RGB; identical images count as 99)")
    trained = training_figure(args.model)
    if trained is not None and len(prompts) == trained.get("images"):
        print(
            f"(the training script recorded held-out adherence {trained['adherence']:.3f} for "
            "this model: the dpmpp_2m 20-step row makes the same images when run with the same "
            "thread count)"
        )

    answer = compare(measured, rows)
    print("\nDoes DPM++ (2M) at 20 steps match PNDM at 50 here?")
    for line in answer["lines"]:
        print(f"  {line}")

    ref_adherence = rows[0]["adherence"]
    warning = None
    if ref_adherence < USEFUL_ADHERENCE:
        warning = (
            f"the reference's own adherence is {ref_adherence:.3f}, near chance (~0.25): this "
            "model does not draw its prompts, so the adherence column says little"
        )
        print(f"\nWARNING: {warning}")

    notes = scheduler_notes(backend)
    for note in notes:
        print(f"\nNOTE: {note}")

    random_weights = load_random_weights()
    if random_weights is not None:
        side_by_side(random_weights, rows)

    save(
        args.name,
        {
            "model": args.model,
            "size": args.size,
            "threads": args.threads,
            "device": "cpu",
            "dtype": "fp32",
            "guidance_scale": GUIDANCE,
            "prompts": len(prompts),
            "seeds": [EVAL_SEED, EVAL_SEED + len(prompts) - 1],
            "reference": {"scheduler": REFERENCE[0], "steps": REFERENCE[1]},
            "psnr": "mean over prompts of each 8-bit RGB image's PSNR (peak 255), identical = 99 dB",
            "rows": rows,
            "dpmpp20_vs_pndm50": {k: v for k, v in answer.items() if k != "lines"},
            "answer": " ".join(answer["lines"]),
            "warning": warning,
            "notes": notes,
            "training_held_out": trained,
            "random_weights": random_weights,
        },
    )


def fmt_db(value: float) -> str:
    return "identical" if value >= PSNR_CAP else f"{value:.1f}"


def compare(
    measured: dict[tuple[str, int], dict[str, Any]], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    dpm = measured[("dpmpp_2m", 20)]
    pndm = measured[("pndm", 50)]
    by = {(r["scheduler"], r["steps"]): r for r in rows}
    diff, half = paired_difference(dpm["evaluation"], pndm["evaluation"])
    adherence_match = abs(diff) <= half
    psnr_dpm = by[("dpmpp_2m", 20)]["psnr_vs_reference_db"]
    psnr_pndm = by[("pndm", 50)]["psnr_vs_reference_db"]
    between = mean_psnr(dpm["pixels"], pndm["pixels"])
    psnr_match = psnr_dpm >= psnr_pndm - 1.0
    gap = psnr_dpm - psnr_pndm
    if gap >= 0:
        psnr_text = f"DPM++-20 is {gap:.1f} dB closer"
    else:
        psnr_text = f"PNDM-50 is {-gap:.1f} dB closer{': within 1 dB' if psnr_match else ''}"
    evals = (by[("dpmpp_2m", 20)]["unet_evaluations"], by[("pndm", 50)]["unet_evaluations"])
    seconds = (by[("dpmpp_2m", 20)]["seconds_per_image"], by[("pndm", 50)]["seconds_per_image"])
    verdict = "yes" if adherence_match and psnr_match else "no"
    at_chance = by[REFERENCE]["adherence"] < USEFUL_ADHERENCE
    lines = [
        f"{verdict}.",
        f"Adherence {by[('dpmpp_2m', 20)]['adherence']:.3f} vs {by[('pndm', 50)]['adherence']:.3f}: "
        f"difference {diff:+.3f}, paired 95% interval +-{half:.3f} "
        f"({'within' if adherence_match else 'outside'} it: "
        f"{'no difference this many prompts can show' if adherence_match else 'a real difference'}).",
        f"PSNR vs the 100-step reference {psnr_dpm:.1f} dB vs {psnr_pndm:.1f} dB "
        f"({psnr_text}); "
        f"the two are {between:.1f} dB from each other.",
        f"Cost: {evals[0]} vs {evals[1]} UNet evaluations, {seconds[0]:.3f} vs {seconds[1]:.3f} "
        f"s/image ({seconds[1] / seconds[0]:.2f}x faster).",
    ]
    if at_chance:
        lines.append(
            "But every row's adherence is near chance on this model, so the adherence half of "
            "the answer is empty: only the PSNR half says anything."
        )
    return {
        "matches": verdict == "yes",
        "adherence_difference": diff,
        "adherence_interval_95": half,
        "adherence_match": adherence_match,
        "psnr_vs_reference_db": [psnr_dpm, psnr_pndm],
        "psnr_match": psnr_match,
        "psnr_between_db": between,
        "unet_evaluations": list(evals),
        "seconds_per_image": list(seconds),
        "lines": lines,
    }


def scheduler_notes(backend: Any) -> list[str]:
    """Settings of the schedulers as built for this model that explain odd rows."""
    from workers.models.schedulers import build_scheduler

    config = dict(backend.pipe.scheduler.config)
    notes = []
    ddim = build_scheduler("ddim", config).config
    if ddim.get("clip_sample"):
        notes.append(
            f"DDIM is built here with clip_sample=True (clip_sample_range "
            f"{ddim.get('clip_sample_range')}): the model's scheduler config does not say "
            "clip_sample=false as SD 1.x's does, so DDIM clips its prediction of the clean "
            "latents, which a latent model's latents exceed; the DDIM rows measure that."
        )
    return notes


def side_by_side(random_weights: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    by = {(r["scheduler"], r["steps"]): r for r in rows}
    print(
        "\nSide by side with the random-weight tiny model it replaces "
        "(results/schedulers_random.json: one prompt; here the mean over the held-out prompts)"
    )
    print(
        f"{'scheduler':<16} {'steps':>5} {'PSNR vs PNDM-50 random':>22} {'trained':>8} "
        f"{'s/image random':>14} {'trained':>8}"
    )
    for old in random_weights.get("rows", []):
        new = by.get((old["scheduler"], old["steps"]))
        if new is None:
            continue
        print(
            f"{old['scheduler']:<16} {old['steps']:>5} {fmt_db(old['psnr_vs_pndm50_db']):>22} "
            f"{fmt_db(new['psnr_vs_pndm50_db']):>8} {old['seconds']:>14.3f} "
            f"{new['seconds_per_image']:>8.3f}"
        )


def training_figure(model: str) -> dict[str, Any] | None:
    """The held-out figure the training script recorded for this model, when it has one (a
    cross-check: the dpmpp_2m 20-step row makes the same images)."""
    from workers.backends.diffusers import model_source

    try:
        path = Path(model_source(model)) / "training.json"
        return json.loads(path.read_text()).get("held_out")
    except Exception:
        return None


if __name__ == "__main__":
    main()
