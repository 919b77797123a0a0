"""Samplers on the flow-matching models (SD 3/3.5, FLUX.1, FLUX.2 Klein): how close each gets
to the converged image in few steps, denoiser evaluations and seconds per image.

    python benchmarks/flow_samplers.py [--models tiny-sd3,tiny-flux,tiny-flux2] [--prompts 16]
                                       [--size 64] [--threads 1] [--no-probe]

Rows, for each of the built-in random-weight models ``tiny-sd3``, ``tiny-flux`` (FLUX.1 dev's
layout: guidance is an input of the model, one call a step) and ``tiny-flux2`` (Klein,
undistilled: true classifier-free guidance, two calls a step): DPM-Solver++ (2M, flow sigmas,
the model's shift: ``dpmpp_2m``) at 4/8/12/20 and 100 steps, FlowMatch Euler (the model's own
scheduler: ``flow_euler``) at 8/28/50 and 400, UniPC (bh2, flow sigmas: ``unipc``) at 8/12/20,
and the reference: FlowMatch Euler at 100 steps. Every row generates the first ``--prompts``
held-out prompts of the scenes world (``workers.tiny.judge``), image ``i`` with seed 1000 + i,
guidance 4.0 (tiny-flux's distilled guidance input), 64x64, through the worker's own backend
(``DiffusersBackend.generate``), on the CPU in fp32 with 1 torch thread, one untimed warm-up
image per row.

What each figure measures:

- PSNR vs reference: the mean over prompts of each image's PSNR (8-bit RGB, peak 255; identical
  images count as 99 dB) against the same prompt and seed at 100 FlowMatch Euler steps, and
  the worst image's. It says how close a sampler gets to the converged solution of the model's
  ODE: solver accuracy. The reference is a FlowMatch Euler run, which favours the Euler rows
  (their discretisation errors are alike), so PSNR against DPM++ at 100 steps and against Euler
  at 400 is given too; the reference's own row against them shows how converged it is.
- latent SNR: the same comparison before the VAE and the 8-bit rounding (the reference
  latents' power over the error's, in dB): the random VAE maps latent differences to small
  pixel ones, and 8-bit pixels that all differ by one level are 48 dB apart, so above ~50 dB
  the image PSNR is near its resolution.
- denoiser evaluations: transformer evaluations per image (two a step with classifier-free
  guidance: tiny-sd3 and tiny-flux2; one for tiny-flux, whose guidance is an input).
- seconds: median over the prompts of one image's generation (text encoding, denoising, VAE
  decoding; not PNG encoding), after the warm-up. The machine was shared while it ran (a test
  suite on the other core): evaluations are the exact cost, seconds compare only roughly.
- the schedule each row stepped through (first and last non-zero sigma; all of them up to 12
  steps), the time shift each step count runs with (Klein's depends on the step count), and
  how rough the model's velocity is in its timestep (``velocity_roughness``).

What random weights can and cannot tell. These models draw noise, not pictures: no trained
flow-matching model exists here yet (a later issue trains one). PSNR to a converged reference
measures how well a sampler integrates THIS model's ODE in few steps; it says nothing of image
quality or prompt adherence (the judge's adherence would be chance for every row, so it is not
computed). And this ODE is not a trained model's: a random transformer mixes all the
frequencies of its sinusoidal timestep features, so its output moves by about 1.5% when the
timestep moves by 1 of 1000 and by 4-10% over 50 (measured on 2026-12-06): a roughness no
schedule of 100 steps resolves. It caps how converged any reference is (Euler-100 is 53-56 dB
in latent SNR from Euler-400) and limits what a solver's order can gain; a trained model's
velocity is smooth in time, so the few-step rows may well rank differently there.

The architectures at full size with random weights: not run, and the script says why from a
measurement (``--no-probe`` skips it). SD 3.5 Medium's MMDiT (1536 wide), FLUX.1 dev's and Klein
4B's transformers (3072 wide) are billions of parameters; the probe builds ONE block of each
(one dual-attention MMDiT layer; one double- and one single-stream block) at that width and
times a denoiser call at 256 px with 32 text tokens (the tiny models' length; the real ones
take 333 or 512, so these are lower bounds), and at 64 px. On our 2-core machine
(2026-12-06, two runs, shared) a call took 0.8-0.9 s (SD3, both guidance halves in one batch)
and 2.5-4.1 s (FLUX.1, Klein) at 256 px: 100 steps with that one block take 1.3-14 minutes an
image (11-300 s at 64 px), the full depths (extrapolated by their blocks' parameters) 25-108
minutes, and the sweep on one block would take 14-21 hours. A transformer that fits "a few
seconds at 100 steps" here would do at most several times the tiny models' work (0.6-1.5 s an
image at 100 steps), nowhere near a real width: it would say no more than they do.
The JSON keeps the probe's figures (``full_size_probe``).

Not measured: trained models (image quality, adherence), other sizes, bf16, GPUs, FLUX.1 schnell
or a step-distilled Klein (no guidance), FLUX's true CFG (``true_cfg_scale``).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any

from _common import ROOT, save
from _flow_full_size import (
    GUIDANCE,
    PROBE_BUDGET_S,
    PROBE_SIZES,
    PROBE_STEPS,
    PROBE_TEXT_TOKENS,
    probe_full_size,
)

sys.path.insert(0, str(ROOT))

import numpy as np

from contract.job import GenerationRequest
from workers.models import is_tiny
from workers.tiny.evaluation import EVAL_SEED, Evaluation
from workers.tiny.judge import HELD_OUT_PROMPTS, judge

MODELS = ("tiny-sd3", "tiny-flux", "tiny-flux2")
# Also runs, on request: the trained tiny-flow (SD3's layout), whose rows are scored by the judge.
TRAINED = ("tiny-flow",)
REFERENCE = ("flow_euler", 100)
DPM_REFERENCE = ("dpmpp_2m", 100)
# How converged the reference itself is: Euler at four times its steps.
CHECK = ("flow_euler", 400)
RUNS = (
    ("dpmpp_2m", 4),
    ("dpmpp_2m", 8),
    ("dpmpp_2m", 12),
    ("dpmpp_2m", 20),
    DPM_REFERENCE,
    ("flow_euler", 8),
    ("flow_euler", 28),
    ("flow_euler", 50),
    ("unipc", 8),
    ("unipc", 12),
    ("unipc", 20),
    CHECK,
)
# The question: DPM++ at these steps against FlowMatch Euler at those.
DPM_STEPS = (8, 12, 20)
EULER_STEPS = (28, 50)
PSNR_CAP = 99.0  # what identical images count as
MATCH_DB = 1.0  # "as close": at most this much further from the reference
SIZE = 64
PROMPTS = 16
TITLES = {"dpmpp_2m": "DPM++ 2M", "flow_euler": "FlowMatch Euler", "unipc": "UniPC"}


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def image_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two 8-bit images in dB, peak 255; identical images give PSNR_CAP."""
    mse = float(np.mean((a - b) ** 2))
    return PSNR_CAP if mse == 0.0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def latent_snr(latents: np.ndarray, reference: np.ndarray) -> float:
    """The reference latents' power over the error's, in dB; identical gives PSNR_CAP."""
    error = float(np.sum((latents - reference) ** 2))
    power = float(np.sum(reference**2))
    return PSNR_CAP if error == 0.0 else min(PSNR_CAP, 10 * math.log10(power / error))


def mean_of(
    measure: Any, values: list[np.ndarray], references: list[np.ndarray]
) -> tuple[float, float]:
    """The mean and the worst (lowest) of ``measure`` over prompts."""
    each = [measure(v, r) for v, r in zip(values, references, strict=True)]
    return statistics.fmean(each), min(each)


def fmt_db(value: float | None) -> str:
    if value is None:
        return "-"
    return "identical" if value >= PSNR_CAP else f"{value:.1f}"


def schedule(scheduler: Any) -> dict[str, Any]:
    """The sigmas a run stepped through (read back from the pipeline's scheduler after it)."""
    sigmas = [float(s) for s in scheduler.sigmas]
    nonzero = [s for s in sigmas if s > 0]
    out: dict[str, Any] = {
        "first_sigma": round(sigmas[0], 4),
        "last_nonzero_sigma": round(nonzero[-1], 4) if nonzero else None,
    }
    if len(sigmas) <= 13:
        out["sigmas"] = [round(s, 4) for s in sigmas]
    return out


class LatentRecorder:
    """Keeps the latents the backend decodes (its ``_decode``), so that the solvers can be
    compared before the VAE and the 8-bit rounding."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.decode = backend._decode
        self.last: np.ndarray | None = None

    def __call__(self, latents: Any, request: Any) -> Any:
        self.last = latents.detach().double().cpu().numpy().copy()
        return self.decode(latents, request)

    def __enter__(self) -> LatentRecorder:
        self.backend._decode = self
        return self

    def __exit__(self, *exc: object) -> None:
        del self.backend._decode  # back to the class's method


def run_row(
    backend: Any,
    prompts: list[str],
    scheduler: str,
    steps: int,
    size: int,
    guidance: float = GUIDANCE,
    score: bool = False,
) -> dict[str, Any]:
    """One sampler at one step count over the prompts; with ``score``, the judge's adherence of
    its images too (for a model that draws the scenes world: ``tiny-flow``)."""

    def request(i: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=prompts[i],
            negative_prompt="",
            seed=EVAL_SEED + i,
            steps=steps,
            guidance_scale=guidance,
            width=size,
            height=size,
            scheduler=scheduler,
        )

    judgements = []
    try:
        backend.generate(request(0))  # untimed warm-up (first use of this sampler and steps)
        sigmas = schedule(backend.pipe.scheduler)
        seconds, images, latents, evaluations = [], [], [], set()
        with LatentRecorder(backend) as recorder:
            for i in range(len(prompts)):
                t0 = time.perf_counter()
                out = backend.generate(request(i))
                seconds.append(time.perf_counter() - t0)
                images.append(pixels(out.image))
                if score:
                    verdict = judge(out.image, prompts[i])
                    assert verdict is not None, prompts[i]
                    judgements.append(verdict)
                assert recorder.last is not None
                latents.append(recorder.last)
                evaluations.add(out.unet_evaluations)
    except Exception as exc:  # a sampler that fails on a family is a row of its own
        return {"error": f"{type(exc).__name__}: {exc}"}
    assert len(evaluations) == 1, evaluations
    scored = {}
    if score:
        ev = Evaluation(judgements, [])
        scored = {"adherence": ev.adherence, "accuracy": ev.accuracy()}
    return {
        **scored,
        "pixels": images,
        "latents": latents,
        "seconds": statistics.median(seconds),
        "evaluations": evaluations.pop(),
        "schedule": sigmas,
    }


def measure_model(
    model: str,
    prompts: list[str],
    size: int,
    threads: int,
    t_start: float,
    guidance: float = GUIDANCE,
) -> dict[str, Any]:
    from workers.task import PipelineCache

    backend, _ = PipelineCache(device="cpu", threads=threads).get(model)
    measured: dict[tuple[str, int], dict[str, Any]] = {}
    for scheduler, steps in (REFERENCE, *RUNS):
        measured[(scheduler, steps)] = run_row(
            backend, prompts, scheduler, steps, size, guidance, score=is_tiny(model)
        )
        status = measured[(scheduler, steps)].get("error", "done")
        print(
            f"  {model} {scheduler} {steps}: {status} ({time.perf_counter() - t_start:.0f}s)",
            flush=True,
        )
    if "error" in measured[REFERENCE]:
        raise SystemExit(f"{model}: the reference failed: {measured[REFERENCE]['error']}")
    ref = measured[REFERENCE]
    dpm_ref = measured[DPM_REFERENCE] if "error" not in measured[DPM_REFERENCE] else None
    check = measured[CHECK] if "error" not in measured[CHECK] else None
    rows = []
    for (scheduler, steps), m in measured.items():
        row: dict[str, Any] = {
            "scheduler": scheduler,
            "steps": steps,
            "reference": (scheduler, steps) == REFERENCE,
        }
        if "error" in m:
            rows.append({**row, "error": m["error"]})
            continue
        psnr, worst = mean_of(image_psnr, m["pixels"], ref["pixels"])
        snr, worst_snr = mean_of(latent_snr, m["latents"], ref["latents"])
        rows.append(
            {
                **row,
                "denoiser_evaluations": m["evaluations"],
                "seconds_per_image": m["seconds"],
                "psnr_vs_reference_db": psnr,
                "psnr_vs_reference_worst_db": worst,
                "psnr_vs_dpmpp100_db": (
                    mean_of(image_psnr, m["pixels"], dpm_ref["pixels"])[0] if dpm_ref else None
                ),
                "latent_snr_vs_reference_db": snr,
                "latent_snr_vs_reference_worst_db": worst_snr,
                "latent_snr_vs_dpmpp100_db": (
                    mean_of(latent_snr, m["latents"], dpm_ref["latents"])[0] if dpm_ref else None
                ),
                "psnr_vs_euler400_db": (
                    mean_of(image_psnr, m["pixels"], check["pixels"])[0] if check else None
                ),
                "latent_snr_vs_euler400_db": (
                    mean_of(latent_snr, m["latents"], check["latents"])[0] if check else None
                ),
                "identical_to_reference": sum(
                    bool(np.array_equal(a, b))
                    for a, b in zip(m["pixels"], ref["pixels"], strict=True)
                ),
                "schedule": m["schedule"],
                **(
                    {"adherence": m["adherence"], "accuracy": m["accuracy"]}
                    if "adherence" in m
                    else {}
                ),
            }
        )
    return {
        "model": model,
        "guidance_scale": guidance,
        "family": backend.family,
        "guidance": backend.info.guidance,
        "scheduler_config": {
            k: backend._scheduler_config.get(k)
            for k in ("shift", "use_dynamic_shifting", "base_shift", "max_shift")
        },
        "shift_by_steps": shift_by_steps(backend, size, sorted({s for _, s in (REFERENCE, *RUNS)})),
        "velocity_roughness": velocity_roughness(backend, prompts[0], size),
        "rows": rows,
    }


def shift_by_steps(backend: Any, size: int, steps: list[int]) -> dict[str, float]:
    """The time shift (``exp(mu)`` where the model's is dynamic) each step count runs with at
    this size, as the family's pipeline computes it: FLUX.1's from the image's token count,
    Klein's from the token count and the step count."""
    config = backend._scheduler_config
    tokens = (size // 16) ** 2  # 2x2 patches of 8x latents
    if not config.get("use_dynamic_shifting"):
        return {str(n): float(config.get("shift") or 1.0) for n in steps}
    if backend.info.pipeline == "Flux2KleinPipeline":
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        return {str(n): round(math.exp(compute_empirical_mu(tokens, n)), 3) for n in steps}
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(
        tokens,
        config["base_image_seq_len"],
        config["max_image_seq_len"],
        config["base_shift"],
        config["max_shift"],
    )
    return {str(n): round(math.exp(mu), 3) for n in steps}


def velocity_roughness(backend: Any, prompt: str, size: int) -> dict[str, Any]:
    """How much the transformer's output changes when only its timestep moves by 1, 5 and 50
    of the schedule's 1,000 (relative to the output's norm), at the middle call of a 4-step
    FlowMatch Euler run: a solver's order pays off only where this is smooth."""
    import torch

    transformer = backend.pipe.transformer
    forward = transformer.forward
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, dict(kwargs)))
        return forward(*args, **kwargs)

    transformer.forward = spy
    try:
        backend.generate(
            GenerationRequest(prompt, "", EVAL_SEED, 4, GUIDANCE, size, size, "flow_euler")
        )
    finally:
        del transformer.forward  # back to the class's method
    args, kwargs = calls[len(calls) // 2]
    kwargs["return_dict"] = False
    t = kwargs["timestep"]
    unit = 1.0 if float(t.max()) > 1.0 else 1e-3  # SD3 takes t in [0, 1000], FLUX t / 1000
    changes: dict[str, float] = {}
    with torch.inference_mode():
        base = transformer(*args, **kwargs)[0]
        for dt in (1, 5, 50):
            moved = transformer(*args, **{**kwargs, "timestep": t - dt * unit})[0]
            changes[str(dt)] = round(float((moved - base).norm() / base.norm()), 4)
    return {"timestep": round(float(t.flatten()[0]) / unit, 1), "relative_change_by_dt": changes}


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['model']} (family {result['family']}, guidance {result['guidance']}); "
        "dB vs flow_euler-100 (ref) and vs dpmpp_2m-100"
    )
    print(
        f"{'sampler':<17} {'steps':>5} {'evals':>5} {'s/image':>7} {'PSNR':>9} {'worst':>5} "
        f"{'vs DPM-100':>10} {'vs E-400':>9} {'latent SNR':>10} {'vs E-400':>9} "
        f"{'sigma 1st':>9} {'last':>6}" + (" adherence" if "adherence" in result["rows"][0] else "")
    )
    for r in result["rows"]:
        name = r["scheduler"] + (" (ref)" if r["reference"] else "")
        if "error" in r:
            print(f"{name:<17} {r['steps']:>5}  FAILED: {r['error']}")
            continue
        s = r["schedule"]
        print(
            f"{name:<17} {r['steps']:>5} {r['denoiser_evaluations']:>5} "
            f"{r['seconds_per_image']:>7.3f} {fmt_db(r['psnr_vs_reference_db']):>9} "
            f"{fmt_db(r['psnr_vs_reference_worst_db']):>5} "
            f"{fmt_db(r['psnr_vs_dpmpp100_db']):>10} {fmt_db(r['psnr_vs_euler400_db']):>9} "
            f"{fmt_db(r['latent_snr_vs_reference_db']):>10} "
            f"{fmt_db(r['latent_snr_vs_euler400_db']):>9} {s['first_sigma']:>9.4f} "
            f"{s['last_nonzero_sigma']:>6.4f}"
            + (f" {r['adherence']:>9.3f}" if "adherence" in r else "")
        )
    shifts = result["shift_by_steps"]
    print("time shift by steps: " + ", ".join(f"{n}: {v:g}" for n, v in shifts.items()))
    rough = result["velocity_roughness"]
    print(
        f"transformer output's relative change when its timestep ({rough['timestep']:g} of "
        f"1000) moves by 1/5/50: "
        + "/".join(f"{v:.3f}" for v in rough["relative_change_by_dt"].values())
    )


# The measures the answer is given by: (row key, label). The first decides; the others say
# whether the reference's kind or the VAE and 8-bit rounding change it.
MEASURES = (
    ("psnr_vs_reference_db", "image PSNR vs Euler-100"),
    ("psnr_vs_dpmpp100_db", "image PSNR vs DPM++-100"),
    ("psnr_vs_euler400_db", "image PSNR vs Euler-400"),
    ("latent_snr_vs_reference_db", "latent SNR vs Euler-100"),
)


def fewest_matching(
    rows: dict[tuple[str, int], dict[str, Any]], scheduler: str, target: float, which: str
) -> int | None:
    """The fewest steps of ``scheduler`` (its rows short of 100) at most MATCH_DB further from
    the reference than ``target``."""
    for (name, steps), row in sorted(rows.items(), key=lambda kv: kv[0][1]):
        value = row.get(which)
        if name == scheduler and steps < 100 and value is not None and value >= target - MATCH_DB:
            return steps
    return None


def compare(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Does DPM++ at 8/12/20 steps get as close to the converged image as Euler at 28/50?

    For each model, measure and Euler row: the fewest DPM++ (and UniPC) steps of 4/8/12/20 whose
    figure is at most MATCH_DB below Euler's. "yes" when DPM++ at 20 steps or fewer matches
    both Euler rows on every model by the first measure, "partly" when it matches Euler-28
    only, "no" when neither."""
    per_model: dict[str, Any] = {}
    for result in results:
        rows = {(r["scheduler"], r["steps"]): r for r in result["rows"]}
        figures: dict[str, Any] = {}
        for which, label in MEASURES:
            euler = {e: rows.get(("flow_euler", e), {}).get(which) for e in EULER_STEPS}
            dpm = {d: rows.get(("dpmpp_2m", d), {}).get(which) for d in DPM_STEPS}
            fewest = {
                f"{sched}_steps_to_match_euler{e}": (
                    None if euler[e] is None else fewest_matching(rows, sched, euler[e], which)
                )
                for sched in ("dpmpp_2m", "unipc")
                for e in EULER_STEPS
            }
            figures[label] = {"euler": euler, "dpmpp": dpm, **fewest}
        figures["evaluations_per_step"] = rows[REFERENCE]["denoiser_evaluations"] // REFERENCE[1]
        figures["references_apart_db"] = {
            "image_psnr": rows.get(DPM_REFERENCE, {}).get("psnr_vs_reference_db"),
            "latent_snr": rows.get(DPM_REFERENCE, {}).get("latent_snr_vs_reference_db"),
        }
        figures["reference_vs_euler400_db"] = {
            "image_psnr": rows.get(CHECK, {}).get("psnr_vs_reference_db"),
            "latent_snr": rows.get(CHECK, {}).get("latent_snr_vs_reference_db"),
        }
        per_model[result["model"]] = figures

    def steps_everywhere(label: str, scheduler: str, e: int) -> int | None:
        found = [m[label][f"{scheduler}_steps_to_match_euler{e}"] for m in per_model.values()]
        return None if any(k is None for k in found) else max(found)

    main_label = MEASURES[0][1]
    matched = {e: steps_everywhere(main_label, "dpmpp_2m", e) for e in EULER_STEPS}
    if all(k is not None for k in matched.values()):
        verdict = "yes"
    elif matched[EULER_STEPS[0]] is not None:
        verdict = "partly"
    else:
        verdict = "no"

    def clause(label: str, scheduler: str = "dpmpp_2m") -> str:
        parts = []
        for e in EULER_STEPS:
            k = steps_everywhere(label, scheduler, e)
            parts.append(
                f"Euler-{e} from {k} steps" if k is not None else f"Euler-{e} at none of 4-20"
            )
        return ", ".join(parts)

    def evaluations(model: str, steps: int) -> int:
        return int(per_model[model]["evaluations_per_step"]) * steps

    models = list(per_model)
    e_first = EULER_STEPS[0]
    lines = []
    for e, k in matched.items():
        if k is None:
            lines.append(
                f"No DPM++ row up to 20 steps gets within {MATCH_DB:g} dB of Euler-{e} on every "
                "model."
            )
            continue
        lines.append(
            f"DPM++ at {k} steps gets within {MATCH_DB:g} dB of Euler-{e}, or closer, on every "
            "model, with "
            + ", ".join(f"{evaluations(m, k)} vs {evaluations(m, e)}" for m in models)
            + " denoiser evaluations an image ("
            + ", ".join(models)
            + ")."
        )
    early = [
        m
        for m in models
        if (k := per_model[m][main_label][f"dpmpp_2m_steps_to_match_euler{e_first}"]) is not None
        and k < (matched[e_first] or 0)
    ]
    if early:
        lines.append(
            f"Fewer DPM++ steps match Euler-{e_first} on "
            + ", ".join(
                f"{m} ({per_model[m][main_label][f'dpmpp_2m_steps_to_match_euler{e_first}']})"
                for m in early
            )
            + "."
        )
    lines.append(f"UniPC: {clause(main_label, 'unipc')}.")
    same = [label for _, label in MEASURES[1:] if clause(label) == clause(main_label)]
    other = [label for _, label in MEASURES[1:] if label not in same]
    if same:
        lines.append(f"The same by {', '.join(same)}.")
    for label in other:
        lines.append(f"By {label}: DPM++ matches {clause(label)}.")
    for model, f in per_model.items():
        main = f[main_label]
        lines.append(
            f"{model}: DPM++ 8/12/20 steps "
            + "/".join(fmt_db(main["dpmpp"][d]) for d in DPM_STEPS)
            + " dB from Euler-100, Euler 28/50 "
            + "/".join(fmt_db(main["euler"][e]) for e in EULER_STEPS)
            + " dB."
        )
    rough = [r["velocity_roughness"]["relative_change_by_dt"] for r in results]
    apart = [f["references_apart_db"]["latent_snr"] for f in per_model.values()]
    converged = [f["reference_vs_euler400_db"]["latent_snr"] for f in per_model.values()]

    def span(values: list[Any], scale: float = 1.0, digits: int = 0) -> str:
        known = [v * scale for v in values if v is not None]
        if not known:
            return "-"
        low, high = min(known), max(known)
        return (
            f"{low:.{digits}f}"
            if round(low, digits) == round(high, digits)
            else (f"{low:.{digits}f}-{high:.{digits}f}")
        )

    moves = (
        f"the transformers' output moves by {span([r['1'] for r in rough], 100, 1)}% when only "
        f"the timestep moves by 1 of 1000 ({span([r['5'] for r in rough], 100)}% by 5, "
        f"{span([r['50'] for r in rough], 100)}% by 50); the Euler-100 reference is "
        f"{span(converged)} dB (latent SNR) from Euler-400 and {span(apart)} dB from DPM++-100"
    )
    # The models trained on the scenes world (tiny-flow) have a velocity worth solving; the
    # flow toys' random weights do not, and the answer says which it measured.
    trained = all(is_tiny(m) for m in models)
    if trained:
        lines.append(f"On trained weights: {moves}.")
        qualifier = "on trained weights (solver accuracy, with each row's prompt adherence)"
    else:
        lines.append(
            f"What random weights do to this: {moves}, a roughness no schedule of 100 steps "
            "resolves, which limits what a solver's order can gain. Whether DPM++ does better "
            "on a trained model's smoother ODE, these figures cannot say."
        )
        qualifier = (
            "as far as random weights can say (solver accuracy on these models' ODEs, not "
            "image quality)"
        )
    answer = f"{verdict.capitalize()}, {qualifier}. " + " ".join(lines)
    return {
        "verdict": verdict,
        "dpmpp_steps_to_match_euler_on_every_model": {f"euler{e}": k for e, k in matched.items()},
        "per_model": per_model,
        "answer": answer,
    }


# --- the architectures at full width: one block each, timed -------------------------------


def probe_summary(probes: dict[str, dict[str, Any]], prompts: int) -> str:
    rows_steps = sum(row[1] for row in (REFERENCE, *RUNS) if row != CHECK)
    big = str(PROBE_SIZES[0])
    small = str(PROBE_SIZES[1])
    sweep_hours = (
        sum(
            p["one_block_seconds_per_image_100_steps"][big]
            / PROBE_STEPS
            * rows_steps
            * (prompts + 1)
            for p in probes.values()
        )
        / 3600
    )
    if all(p["fits_budget"] for p in probes.values()):
        return (
            "one block at full width fits the budget here: a sweep on it would be worth adding "
            "(it is not run by this script)"
        )
    per = "; ".join(
        f"{m}: {p['seconds_per_call'][big]:.2f} s a call at {big} px "
        f"({p['one_block_seconds_per_image_100_steps'][big]:.0f} s an image at 100 steps with "
        f"one block, {p['one_block_seconds_per_image_100_steps'][small]:.0f} s at {small} px; "
        f"~{p['full_depth_seconds_per_image_100_steps'][big] / 60:.0f} min at full depth)"
        for m, p in probes.items()
    )
    return (
        f"not run: one block at full width already takes far more than {PROBE_BUDGET_S:g} s an "
        f"image at 100 steps on this CPU ({per}). The sweep ({rows_steps} steps a prompt, "
        f"{prompts} prompts and a warm-up) with ONE block would take ~{sweep_hours:.0f} h; a "
        "transformer small enough to fit would be nowhere near a real width and would say no "
        "more than the tiny models."
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--prompts", type=int, default=PROMPTS)
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the tiny models' 1)")
    ap.add_argument(
        "--guidance", type=float, default=GUIDANCE, help=f"guidance scale (default {GUIDANCE:g})"
    )
    ap.add_argument(
        "--no-probe", action="store_true", help="skip timing full-width blocks (about a minute)"
    )
    ap.add_argument(
        "--name", default="flow_samplers", help="results file: benchmarks/results/NAME.json"
    )
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS + TRAINED]
    if unknown:  # the probe and the roughness check know these families' call shapes
        ap.error(
            f"--models: {', '.join(unknown)}: this benchmark runs {', '.join(MODELS + TRAINED)}"
        )
    prompts = list(HELD_OUT_PROMPTS[: args.prompts])
    load_before = os.getloadavg()

    t_start = time.perf_counter()
    results = [
        measure_model(m, prompts, args.size, args.threads, t_start, args.guidance) for m in models
    ]
    sweep_s = time.perf_counter() - t_start

    print(
        f"\n{len(prompts)} held-out prompts (seeds {EVAL_SEED}..{EVAL_SEED + len(prompts) - 1}), "
        f"{args.size}x{args.size}, guidance {args.guidance:g}, CPU fp32, {args.threads} torch thread(s); "
        "reference: flow_euler at 100 steps; PSNR: mean over prompts, dB, 8-bit RGB "
        "(identical = 99); worst: the lowest image's"
    )
    for result in results:
        print_table(result)

    answer = compare(results)
    print(
        "\nDoes DPM++ at 8/12/20 steps get as close to the converged image as FlowMatch Euler "
        "at 28/50?"
    )
    print(f"  {answer['answer']}")

    probes: dict[str, dict[str, Any]] = {}
    probe_text = "skipped (--no-probe)"
    if not args.no_probe:
        print("\nThe architectures at full width (one block each, random weights):")
        for m in models:
            if m in TRAINED:
                continue
            probes[m] = probe_full_size(m, args.threads)
            p = probes[m]
            print(
                f"  {m}: {p['architecture']}: {p['probe_params_millions']:.0f}M parameters, "
                f"{p['seconds_per_call']} s a call by size (px); 100 steps: "
                f"{p['one_block_seconds_per_image_100_steps']} s with one block, "
                f"{p['full_depth_seconds_per_image_100_steps']} s at full depth "
                f"(~{p['full_params_millions_extrapolated'] / 1000:.1f}B parameters)",
                flush=True,
            )
        probe_text = probe_summary(probes, len(prompts))
        print(f"  {probe_text}")

    total_s = time.perf_counter() - t_start
    print(f"\nrun time: sweep {sweep_s:.0f} s, in all {total_s:.0f} s")
    import diffusers
    import torch

    save(
        args.name,
        {
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
            "load_average_before_after": [
                [round(x, 2) for x in load_before],
                [round(x, 2) for x in os.getloadavg()],
            ],
            "models": models,
            "size": args.size,
            "threads": args.threads,
            "device": "cpu",
            "dtype": "fp32",
            "guidance_scale": args.guidance,
            "prompts": len(prompts),
            "seeds": [EVAL_SEED, EVAL_SEED + len(prompts) - 1],
            "reference": {"scheduler": REFERENCE[0], "steps": REFERENCE[1]},
            "psnr": "mean over prompts of each 8-bit RGB image's PSNR (peak 255), identical = 99 dB",
            "match_rule": f"at most {MATCH_DB:g} dB further from the reference",
            "results": results,
            "dpmpp_vs_euler": {k: v for k, v in answer.items() if k != "answer"},
            "answer": answer["answer"],
            "full_size_probe": {
                "what": (
                    "one block of each family's full-width transformer, random weights, one "
                    f"denoiser call timed at {PROBE_SIZES} px with {PROBE_TEXT_TOKENS} text "
                    "tokens (median after a warm-up); full depth extrapolated by the blocks' "
                    "parameters"
                ),
                "budget_s_per_image_at_100_steps": PROBE_BUDGET_S,
                "families": probes,
                "conclusion": probe_text,
            },
            "run_time_s": {"sweep": round(sweep_s), "total": round(total_s)},
        },
    )


if __name__ == "__main__":
    main()
