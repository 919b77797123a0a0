"""How far the same job's pixels and prompt adherence move between runs: ``reproduce`` in a new
process, 1 vs 2 torch threads, a GPU (fp16) vs the CPU (fp32), and a compressed variant.

    python benchmarks/drift.py [--model tiny] [--prompts 60] [--size 64]

Every side generates the held-out prompts of ``workers.tiny.judge`` (image i with seed 1000 + i,
20 DPM-Solver++ steps, guidance 7.5) as jobs run by the worker's own task
(``workers.task.run_job``: PNGs with the metadata ``orchestrate reproduce`` reads), each side in a
process of its own. The baseline is the CPU in fp32 with 2 torch threads (the default of every
model but the built-in tiny ones, whose default is side (b)'s 1 thread). Sides:

(a) ``reproduce``: a second process regenerates each baseline PNG from its own metadata
    (``orchestrator.reproduce.reproduce_image``, as ``orchestrate reproduce IMAGE`` does: the
    recorded device and thread count). Expected: bit-identical.
(b) threads: the same jobs with 1 torch thread. The thread count changes how reductions are
    split, and so may change CPU pixels (``reproduce`` uses the recorded count for this reason).
(c) device: the same jobs on CUDA or MPS (fp16, as the backend runs there), when torch sees one,
    and a second GPU run to show whether the GPU repeats itself; skipped, with the reason printed,
    on a machine without one.
(d) variant: the same jobs with ``quantization: 6bit``, the palettized torch variant the worker
    builds on first use (here in a temporary cache folder, not the user's), on the CPU.

Figures per side, against the baseline: how many images are bit-identical, the mean and worst
PSNR of the others (8-bit RGB, peak 255), the largest difference of one pixel channel (0-255),
the adherence of each side (the built-in judge's share of stated attributes shown), how many
images the judge scores differently, and the median seconds per image (generation only, model
load excluded). They say how much an image moves when the run's settings move, and whether that
changes what the image shows; not whether either side is better. One run per side; adherence
means something only for a model of the scenes world (the built-in tiny one); the GPU row needs
a machine that has one.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Passive OpenMP waits, as every orchestrate command sets before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import ROOT, save

sys.path.insert(0, str(ROOT))

import numpy as np

# Below this the baseline does not draw its prompts: adherence then shows nothing.
USEFUL_ADHERENCE = 0.5
STEPS = 20
SCHEDULER = "dpmpp_2m"
GUIDANCE = 7.5


def jobs(model: str, n: int, size: int, quantization: str = "fp16") -> list[dict[str, Any]]:
    from workers.tiny.evaluation import EVAL_SEED
    from workers.tiny.judge import HELD_OUT_PROMPTS

    return [
        {
            "prompt": prompt,
            "negative_prompt": "",
            "seed": EVAL_SEED + i,
            "steps": STEPS,
            "guidance_scale": GUIDANCE,
            "width": size,
            "height": size,
            "scheduler": SCHEDULER,
            "model": model,
            "quantization": quantization,
        }
        for i, prompt in enumerate(HELD_OUT_PROMPTS[:n])
    ]


# --- the child processes ---------------------------------------------------------------------


def child_generate(args: argparse.Namespace) -> None:
    """Run the jobs with the given device, threads and quantization; write NN.png and run.json."""
    from workers.task import PipelineCache, run_job

    out = Path(args.out)
    cache = PipelineCache(device=args.device, threads=args.threads)
    seconds, load, run = [], 0.0, {}
    for i, job in enumerate(jobs(args.model, args.prompts, args.size, args.quantization)):
        result = run_job(job, cache)
        (out / f"{i:02d}.png").write_bytes(result.png)
        r = result.result
        load += r["load_s"]
        seconds.append(r["text_encode_s"] + r["denoise_s"] + r["decode_s"])
        run = {k: r[k] for k in ("backend", "device", "dtype", "torch_threads")}
    (out / "run.json").write_text(json.dumps({**run, "seconds": seconds, "load_s": load}))


def child_reproduce(args: argparse.Namespace) -> None:
    """``reproduce`` every NN.png in the folder (writing NN.reproduced.png); write reproduce.json."""
    from orchestrator.reproduce import reproduce_image

    out = Path(args.out)
    results = []
    for path in sorted(out.glob("[0-9][0-9].png")):
        t0 = time.perf_counter()
        rep = reproduce_image(path, write_copy=True)
        results.append(
            {
                "image": path.name,
                "identical": rep.identical,
                "psnr_db": rep.psnr_db,
                "max_abs_diff": rep.max_abs_diff,
                "differences": rep.differences,
                "seconds_with_load": time.perf_counter() - t0,
                "here": {k: v for k, v in rep.here.items() if k != "versions"},
            }
        )
    (out / "reproduce.json").write_text(json.dumps(results))


def spawn(mode: str, out: Path, args: argparse.Namespace, **opts: Any) -> float:
    """Run this script as a child in ``mode``; returns its wall seconds."""
    env = dict(os.environ)
    cache = opts.pop("cache", None)
    if cache is not None:
        env["ORCHESTRATE_CACHE"] = str(cache)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--out", str(out)]
    cmd += ["--model", args.model, "--prompts", str(args.prompts), "--size", str(args.size)]
    for key, value in opts.items():
        cmd += [f"--{key}", str(value)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


# --- comparing sides -------------------------------------------------------------------------


def load_side(folder: Path, pattern: str = "[0-9][0-9].png") -> list[np.ndarray]:
    from PIL import Image

    out = []
    for path in sorted(folder.glob(pattern)):
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.int16))
    return out


def image_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two different 8-bit images, peak 255."""
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * math.log10(255.0**2 / mse)


def judged(images: list[np.ndarray], prompts: list[str]) -> list[Any]:
    from PIL import Image

    from workers.tiny.judge import judge

    out = []
    for pixels, prompt in zip(images, prompts, strict=True):
        verdict = judge(Image.fromarray(pixels.astype(np.uint8)), prompt)
        assert verdict is not None
        out.append(verdict)
    return out


def compare(
    label: str,
    what: str,
    base: list[np.ndarray],
    other: list[np.ndarray],
    prompts: list[str],
    seconds: list[float] | None,
) -> dict[str, Any]:
    from workers.tiny.judge import adherence

    if len(other) != len(base):
        raise RuntimeError(f"{label}: {len(other)} images where {len(base)} were expected")
    differing = [(a, b) for a, b in zip(base, other, strict=True) if not np.array_equal(a, b)]
    psnrs = [image_psnr(a, b) for a, b in differing]
    j_base, j_other = judged(base, prompts), judged(other, prompts)
    return {
        "side": label,
        "what": what,
        "images": len(base),
        "identical": len(base) - len(differing),
        "mean_psnr_differing_db": statistics.fmean(psnrs) if psnrs else None,
        "min_psnr_db": min(psnrs) if psnrs else None,
        "max_abs_diff": max(int(np.abs(a - b).max()) for a, b in zip(base, other, strict=True)),
        "adherence_baseline": adherence(j_base),
        "adherence": adherence(j_other),
        "judged_differently": sum(a.right != b.right for a, b in zip(j_base, j_other, strict=True)),
        "seconds_per_image": statistics.median(seconds) if seconds else None,
    }


def gpu_devices() -> tuple[list[str], str]:
    """The GPU devices torch sees here, and why none when none."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    if found:
        return found, ""
    why = f"torch {torch.__version__} sees no CUDA GPU"
    if torch.version.cuda is None:
        why += " (a CPU-only build)"
    return [], why + " and no Apple GPU (MPS) on this machine"


def fmt_db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    from workers.tiny.judge import HELD_OUT_PROMPTS

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=len(HELD_OUT_PROMPTS))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--child", choices=("generate", "reproduce"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--quantization", default="fp16", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "generate":
        child_generate(args)
    elif args.child == "reproduce":
        child_reproduce(args)
    else:
        parent(args)


def parent(args: argparse.Namespace) -> None:
    from workers.tiny.judge import HELD_OUT_PROMPTS

    prompts = list(HELD_OUT_PROMPTS[: args.prompts])
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    runs: dict[str, Any] = {}

    def side(folder: Path) -> tuple[list[np.ndarray], list[float]]:
        run = json.loads((folder / "run.json").read_text())
        runs[folder.name] = {k: v for k, v in run.items() if k != "seconds"}
        return load_side(folder), run["seconds"]

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t_start = time.perf_counter()

        def step(name: str) -> None:
            print(f"  {name}: done ({time.perf_counter() - t_start:.0f}s)", flush=True)

        # Baseline: CPU fp32, 2 threads, in a process of its own
        base_dir = tmp / "cpu_2threads"
        base_dir.mkdir()
        spawn("generate", base_dir, args, device="cpu", threads=2)
        base, base_s = side(base_dir)
        step("baseline (CPU, 2 threads)")

        # (a) reproduce in a second process
        spawn("reproduce", base_dir, args)
        reproduced = load_side(base_dir, "[0-9][0-9].reproduced.png")
        report = json.loads((base_dir / "reproduce.json").read_text())
        row = compare(
            "(a) reproduce",
            "`reproduce` of each baseline PNG in a second process (recorded device, threads)",
            base,
            reproduced,
            prompts,
            None,
        )
        row["reproduce_says_identical"] = sum(r["identical"] for r in report)
        row["reproduce_differences"] = sorted({d for r in report for d in r["differences"]})
        row["expected"] = "bit-identical"
        rows.append(row)
        step("(a) reproduce")

        # (b) 1 torch thread
        one = tmp / "cpu_1thread"
        one.mkdir()
        spawn("generate", one, args, device="cpu", threads=1)
        images, secs = side(one)
        rows.append(
            compare("(b) 1 thread", "CPU fp32, 1 torch thread vs 2", base, images, prompts, secs)
        )
        step("(b) 1 thread")

        # (c) a GPU in fp16, twice
        devices, why = gpu_devices()
        if not devices:
            skipped["(c) GPU fp16"] = why
        for dev in devices:
            first = tmp / f"{dev}_1"
            first.mkdir()
            spawn("generate", first, args, device=dev, threads=2)
            gpu, secs = side(first)
            dtype = runs[first.name]["dtype"]
            rows.append(
                compare(
                    f"(c) {dev}",
                    f"{dev} {dtype} vs CPU fp32 (2 threads)",
                    base,
                    gpu,
                    prompts,
                    secs,
                )
            )
            again = tmp / f"{dev}_2"
            again.mkdir()
            spawn("generate", again, args, device=dev, threads=2)
            gpu2, secs2 = side(again)
            row = compare(
                f"(c) {dev} again",
                f"a second {dev} {dtype} run vs the first (its own baseline)",
                gpu,
                gpu2,
                prompts,
                secs2,
            )
            row["expected"] = "bit-identical unless the GPU kernels are non-deterministic"
            rows.append(row)
            step(f"(c) {dev}")

        # (d) the palettized 6-bit torch variant, built in a temporary cache
        variant = tmp / "cpu_6bit"
        variant.mkdir()
        spawn("generate", variant, args, device="cpu", threads=2, quantization="6bit", cache=tmp)
        images, secs = side(variant)
        rows.append(
            compare(
                "(d) 6bit variant",
                "quantization 6bit (uniform palettization, torch variant) vs unquantized, CPU",
                base,
                images,
                prompts,
                secs,
            )
        )
        step("(d) 6bit variant")

    print(
        f"\nmodel {args.model}, {len(prompts)} held-out prompts, {args.size} px, {STEPS} "
        f"{SCHEDULER} steps, guidance {GUIDANCE}; baseline: CPU fp32, 2 torch threads "
        f"(adherence {rows[0]['adherence_baseline']:.3f}, "
        f"{statistics.median(base_s):.3f} s/image)"
    )
    print(
        f"{'side':<17} {'identical':>9} {'PSNR of the differing: mean':>27} {'min':>5} {'max diff':>8} "
        f"{'adherence':>9} {'vs base':>8} {'judged diff.':>12} {'s/image':>8}"
    )
    for r in rows:
        secs_text = "-" if r["seconds_per_image"] is None else f"{r['seconds_per_image']:.3f}"
        print(
            f"{r['side']:<17} {r['identical']:>4}/{r['images']:<4} "
            f"{fmt_db(r['mean_psnr_differing_db']):>27} {fmt_db(r['min_psnr_db']):>5} "
            f"{r['max_abs_diff']:>8} {r['adherence']:>9.3f} "
            f"{r['adherence'] - r['adherence_baseline']:>+8.3f} {r['judged_differently']:>12} "
            f"{secs_text:>8}"
        )
    for name, reason in skipped.items():
        print(f"{name}: skipped: {reason}")
    print(
        "(PSNR in dB, 8-bit RGB, peak 255, over the images that differ from the other side's; "
        "max diff: the largest difference of one pixel channel, 0-255)"
    )
    warning = None
    if rows[0]["adherence_baseline"] < USEFUL_ADHERENCE:
        warning = (
            f"the baseline's adherence is {rows[0]['adherence_baseline']:.3f}, near chance "
            "(~0.25): this model does not draw its prompts, so the adherence columns show noise"
        )
        print(f"WARNING: {warning}")
    a = rows[0]
    verdict = "as expected" if a["identical"] == a["images"] else "NOT as expected"
    print(
        f"\n(a) reproduce: expected bit-identical; {a['identical']}/{a['images']} identical "
        f"({verdict}; reproduce itself reported {a['reproduce_says_identical']} identical)"
    )
    save(
        "drift",
        {
            "model": args.model,
            "prompts": len(prompts),
            "size": args.size,
            "steps": STEPS,
            "scheduler": SCHEDULER,
            "guidance_scale": GUIDANCE,
            "baseline": {
                "device": "cpu",
                "dtype": "fp32",
                "threads": 2,
                "adherence": rows[0]["adherence_baseline"],
                "seconds_per_image": statistics.median(base_s),
            },
            "psnr": "over the images that differ (the identical ones are counted apart), "
            "8-bit RGB, peak 255",
            "rows": rows,
            "skipped": skipped,
            "warning": warning,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
