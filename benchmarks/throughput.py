"""Throughput of the worker path (SQLite queue, leases, batches, PNG metadata, atomic writes)
against a bare diffusers loop on the same loaded pipeline, in one process, same batch size.

    python benchmarks/throughput.py               # CPU rows: tiny (64 px) and SD 1.5's UNet (128 px)
    python benchmarks/throughput.py --gpu         # GPU rows (CUDA or MPS): SD 1.5 512 px, SDXL 1024 px,
                                                  # 20 DPM-Solver++ steps, batch 1/4/8/16, fp16, +-compile
    python benchmarks/throughput.py --gpu-smoke   # the GPU rows' code on the CPU, toy models and sizes
    python benchmarks/throughput.py --sizes       # SDXL UNet sizes at uniform and mixed-bit averages

Each row: images/s of both paths after a warm-up on both sides (model loaded, first image
made), alternating bare / worker ``--repeats`` times (median), their ratio (target: >= 0.97),
and the worker's time per image by stage (from its own attempt records; a batch's stage
times are shared out). Random weights: speed depends on the shapes, not the weights.

What it does not measure: model load time, process start, a second machine (the RQ path's
extra hop is benchmarks/overhead_rq.py), or anything the pixels say.

On the CPU a worker's batch runs the UNet image by image (bit-identical to the lone image,
``DiffusersBackend.fused_batches``), so the bare loop's fused batch there is what that
identity costs; on CUDA/MPS both sides fuse the batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import save

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

STAGES = ("text_encode_s", "denoise_s", "decode_s", "encode_s", "total_s")


def prompts(n: int) -> list[tuple[str, int]]:
    colours = ("red", "green", "blue", "yellow", "white", "black")
    return [
        (f"a {colours[i % 6]} circle on a {colours[(i + 1) % 6]} background", i) for i in range(n)
    ]


def worker_path(
    cache: Any,
    model: str,
    jobs: list[tuple[str, int]],
    size: int,
    steps: int,
    batch: int,
    tmp: Path,
) -> dict[str, Any]:
    """Images/s of the local worker (what `orchestrate run` runs) over ``jobs``."""
    import csv
    import io

    from orchestrator.config import WorkerSettings
    from orchestrator.database import database_url, open_engine
    from orchestrator.manifest import parse_manifest
    from orchestrator.store import JobStore
    from orchestrator.transports.local import LocalWorker

    run = Path(tempfile.mkdtemp(dir=tmp))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["prompt", "seed", "model", "steps", "width", "height", "scheduler"])
    for prompt, seed in jobs:
        w.writerow([prompt, seed, model, steps, size, size, "dpmpp_2m"])
    manifest = parse_manifest(
        buf.getvalue(), "bench.csv", None, native_size=lambda _m: (size, size)
    )
    engine = open_engine(database_url(str(run / "jobs.db")))
    store = JobStore(engine)
    store.submit(manifest, name="bench", defaults={}, max_attempts=1)
    settings = WorkerSettings(
        output_dir=run / "out",
        burst=True,
        poll_seconds=0.01,
        batch_size=batch,
        threads=cache.threads,
    )
    worker = LocalWorker(store, settings, cache=cache)
    t0 = time.perf_counter()
    stats = worker.run()
    wall = time.perf_counter() - t0
    if stats.succeeded != len(jobs):
        raise RuntimeError(f"worker path: {stats.succeeded}/{len(jobs)} succeeded")
    with engine.connect() as conn:
        from sqlalchemy import text

        rows = conn.execute(text(f"SELECT {', '.join(STAGES)}, batch_size FROM attempts")).all()
    engine.dispose()
    stages = {s: statistics.mean(float(r[i]) for r in rows) for i, s in enumerate(STAGES)}
    stages["outside_task_s"] = wall / len(jobs) - stages["total_s"]
    return {
        "images_per_s": len(jobs) / wall,
        "per_image_s": stages,
        "batch_sizes": sorted({int(r[-1]) for r in rows}),
    }


def bare_loop(
    pipe: Any, jobs: list[tuple[str, int]], size: int, steps: int, batch: int, tmp: Path
) -> float:
    """Images/s of a hand-written loop: the pipeline called on ``batch`` prompts at a time
    (one CPU generator per image), each image saved as a PNG."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    out = Path(tempfile.mkdtemp(dir=tmp))
    t0 = time.perf_counter()
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        images = pipe(
            prompt=[p for p, _ in chunk],
            negative_prompt=[""] * len(chunk),
            num_inference_steps=steps,
            guidance_scale=7.5,
            height=size,
            width=size,
            generator=[torch.Generator("cpu").manual_seed(s) for _, s in chunk],
        ).images
        for (_, seed), image in zip(chunk, images, strict=True):
            image.save(out / f"{seed}.png")
    return len(jobs) / (time.perf_counter() - t0)


def measure(
    cache: Any,
    model: str,
    *,
    size: int,
    steps: int,
    batch: int,
    images: int,
    repeats: int,
    tmp: Path,
) -> dict[str, Any]:
    backend, _ = cache.get(model)
    jobs = prompts(images)
    # Warm-up on both sides: kernels chosen, caches filled, compiled graphs built for this
    # batch shape.
    bare_loop(backend.pipe, jobs[:batch], size, steps, batch, tmp)
    worker_path(cache, model, jobs[:batch], size, steps, batch, tmp)
    bare, work = [], []
    detail: dict[str, Any] = {}
    for _ in range(repeats):
        bare.append(bare_loop(backend.pipe, jobs, size, steps, batch, tmp))
        detail = worker_path(cache, model, jobs, size, steps, batch, tmp)
        work.append(detail["images_per_s"])
    row = {
        "model": model,
        "device": backend.device,
        "dtype": backend.dtype,
        "tuning": backend.tuning_label,
        "size": size,
        "steps": steps,
        "batch": batch,
        "images": images,
        "repeats": repeats,
        "bare_images_per_s": statistics.median(bare),
        "worker_images_per_s": statistics.median(work),
        "ratio": statistics.median(work) / statistics.median(bare),
        "worker_per_image_s": {k: round(v, 4) for k, v in detail["per_image_s"].items()},
        "worker_batch_sizes": detail["batch_sizes"],
        "fused_batches": backend.fused_batches,
    }
    print(
        f"{model:10s} {size:5d}px {steps:3d} steps batch {batch:2d} {row['tuning'] or '-':14s} "
        f"bare {row['bare_images_per_s']:7.3f} img/s  worker {row['worker_images_per_s']:7.3f} img/s  "
        f"ratio {row['ratio']:.3f}  (denoise {row['worker_per_image_s']['denoise_s']:.3f} s/img, "
        f"outside the task {row['worker_per_image_s']['outside_task_s']:.3f} s/img)",
        flush=True,
    )
    return row


def register(cache: Any, name: str, pipe: Any, **kw: Any) -> None:
    """Make an in-memory pipeline the cache's model ``name`` (as if loaded from a folder)."""
    from workers.backends.diffusers import DiffusersBackend

    cache.current = DiffusersBackend(
        name, pipeline=pipe, threads=cache.threads, tuning=cache.tuning, **kw
    )


def cpu_rows(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """tiny at 64 px and SD 1.5's UNet at 128 px: batch 1 (what ``auto`` is on the CPU), a
    batch of 4 as the worker runs it by default (image by image inside the call: byte-identical
    to the lone images), and a batch of 4 with ``--fused-batches``; each against a bare loop at
    the same batch size (which always fuses)."""
    from _architectures import sd15_pipeline

    from workers.task import PipelineCache
    from workers.tuning import Tuning

    rows = []
    exact = PipelineCache(device="cpu", threads=args.threads)
    fused = PipelineCache(device="cpu", threads=args.threads, tuning=Tuning(fused_batches=True))
    plan = [
        (exact, 1, 16, args.repeats),
        (exact, 4, 16, args.repeats),
        (fused, 4, 16, args.repeats),
    ]
    for cache, batch, images, repeats in plan:
        rows.append(
            measure(
                cache,
                "tiny",
                size=64,
                steps=20,
                batch=batch,
                images=images,
                repeats=repeats,
                tmp=tmp,
            )
        )
    tiny, _ = exact.get("tiny")
    sd15 = sd15_pipeline(tiny.pipe)
    register(exact, "sd15-arch", sd15, device="cpu")
    register(fused, "sd15-arch", sd15, device="cpu")
    for cache, batch, images, repeats in ((exact, 1, 3, args.repeats), (fused, 4, 4, 1)):
        rows.append(
            measure(
                cache,
                "sd15-arch",
                size=128,
                steps=10,
                batch=batch,
                images=images,
                repeats=repeats,
                tmp=tmp,
            )
        )
    return rows


def gpu_rows(args: argparse.Namespace, tmp: Path, smoke: bool) -> list[dict[str, Any]]:
    from _architectures import sd15_pipeline, sdxl_pipeline

    from workers.task import PipelineCache
    from workers.tuning import Tuning

    device = "cpu" if smoke else args.device
    rows = []
    if smoke:
        plan = [("tiny", None, 64), ("tiny-xl", None, 64)]
        batches, steps, compiles = [1, 2], 4, [False]
    else:
        plan = [("sd15-arch", "sd15", 512), ("sdxl-arch", "sdxl", 1024)]
        plan = [p for p in plan if p[1] in args.models]
        batches, steps, compiles = args.batches, 20, [False, True]
        if device != "cuda":
            compiles = [False]  # --compile is CUDA only
    for name, kind, size in plan:
        for compile_unet in compiles:
            cache = PipelineCache(
                device=device, threads=args.threads, tuning=Tuning(compile=compile_unet)
            )
            if kind is not None:
                tiny, _ = PipelineCache(device="cpu").get("tiny" if kind == "sd15" else "tiny-xl")
                built = (
                    sd15_pipeline(tiny.pipe, full=True)
                    if kind == "sd15"
                    else sdxl_pipeline(tiny.pipe)
                )
                register(cache, name, built, device=device)
            for batch in batches:
                images = max(2 * batch, 4 if smoke else 8)
                rows.append(
                    measure(
                        cache,
                        name,
                        size=size,
                        steps=steps,
                        batch=batch,
                        images=images,
                        repeats=1,
                        tmp=tmp,
                    )
                )
            del cache
    return rows


def sdxl_sizes() -> dict[str, Any]:
    """SDXL base UNet sizes (meta device: shapes only) at fp16, uniform bits and mixed-bit
    averages. A palettized size depends on the average bits, not on which layers get which;
    choosing the layers (the sensitivity analysis) needs SDXL's real weights."""
    import torch
    from _architectures import sdxl_unet

    from workers.compression.palettize import UNIFORM_MIN_SIZE, candidate_layers
    from workers.compression.variants import unet_megabytes

    with torch.device("meta"):
        unet = sdxl_unet()
    layers = candidate_layers(unet, UNIFORM_MIN_SIZE)
    params = sum(p.numel() for p in unet.parameters())
    out: dict[str, Any] = {"parameters": params, "palettizable_layers": len(layers)}
    out["fp16_mb"] = unet_megabytes(unet, {})["fp16_mb"]
    for bits in (8, 6, 4, 2):
        out[f"uniform_{bits}bit_mb"] = unet_megabytes(unet, dict.fromkeys(layers, bits))[
            "palettized_mb"
        ]
    ordered = sorted(layers, key=lambda n: -layers[n])
    total = sum(layers.values())
    for target in (6.5, 4.5, 3.4, 2.8):
        low = max(b for b in (1, 2, 4, 6, 8) if b <= target)
        high = min(b for b in (2, 4, 6, 8) if b >= target) if target < 8 else 8
        # The share of parameters at ``high`` that makes the average ``target``.
        share = 0.0 if high == low else (target - low) / (high - low)
        recipe, done = {}, 0
        for name in ordered:
            recipe[name] = high if done < share * total else low
            done += layers[name]
        mb = unet_megabytes(unet, recipe)["palettized_mb"]
        out[f"mixed_{target}bit_mb"] = mb
    out["apple_published"] = {"fp16_gb": 5.14, "mixed_4.5bit_gb": 1.46, "grouped_4bit_g16_gb": 1.21}
    return out


def tiny_xl_packages(tmp: Path) -> dict[str, Any]:
    """The estimate above checked against real Core ML packages of the same architecture
    family: tiny-xl converted (Apple's SDXL layout) and its UNet palettized at uniform 8/4/2
    bits, package size on disk against ``unet_megabytes``' estimate. A full SDXL conversion
    needs more memory than this machine's 24 GiB; the tiny one has every part of it."""
    import shutil

    import torch

    from workers.backends.coreml_folder import UNET
    from workers.backends.diffusers import load_pipeline, model_source
    from workers.compression.coreml import convert_pipeline, package_megabytes, palettize_unet
    from workers.compression.palettize import uniform_recipe
    from workers.compression.variants import unet_megabytes

    pipe = load_pipeline(model_source("tiny-xl"), torch.float32)
    base = tmp / "tiny-xl-coreml"
    convert_pipeline(pipe, base, model_version="tiny-xl")
    out: dict[str, Any] = {
        "fp16": {
            "package_mb": package_megabytes(base / f"{UNET}.mlpackage"),
            "estimate_mb": unet_megabytes(pipe.unet, {})["fp16_mb"],
        }
    }
    for bits in (8, 4, 2):
        folder = tmp / f"tiny-xl-{bits}"
        shutil.copytree(base, folder)
        recipe = uniform_recipe(pipe.unet, bits)
        palettize_unet(folder, pipe.unet, recipe)
        out[f"uniform_{bits}bit"] = {
            "package_mb": package_megabytes(folder / f"{UNET}.mlpackage"),
            "estimate_mb": unet_megabytes(pipe.unet, recipe)["palettized_mb"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="GPU rows (CUDA or MPS)")
    ap.add_argument(
        "--gpu-smoke", action="store_true", help="the GPU rows' code on the CPU, toy sizes"
    )
    ap.add_argument("--sizes", action="store_true", help="SDXL UNet size table only")
    ap.add_argument("--device", default="cuda", choices=["cuda", "mps"])
    ap.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 16])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.sizes:
        sizes = sdxl_sizes()
        for k, v in sizes.items():
            print(f"{k}: {v}")
        with tempfile.TemporaryDirectory() as d:
            packages = tiny_xl_packages(Path(d))
        print("tiny-xl Core ML UNet packages (MB on disk vs estimate; the package adds its")
        print("program and metadata, which weigh more at toy size):")
        for k, v in packages.items():
            print(f"  {k}: {v['package_mb']:.3f} vs {v['estimate_mb']:.3f}")
        save("throughput_sdxl_sizes", {"sdxl_unet": sizes, "tiny_xl_coreml_unet": packages})
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.gpu or args.gpu_smoke:
            import torch

            name = (
                "cpu (smoke)"
                if args.gpu_smoke
                else (torch.cuda.get_device_name() if args.device == "cuda" else "Apple GPU (MPS)")
            )
            rows = gpu_rows(args, tmp, smoke=args.gpu_smoke)
            save(
                "throughput_gpu_smoke" if args.gpu_smoke else "throughput_gpu",
                {"device_name": name, "rows": rows},
            )
            return
        rows = cpu_rows(args, tmp)
    save(
        "throughput",
        {
            "rows": rows,
            "note": "CPU, torch threads as given; tiny: the built-in model; sd15-arch: SD 1.5's "
            "UNet with random weights (two-layer text encoder and the tiny VAE), 128 px, "
            "10 steps. auto batch size on the CPU is 1.",
        },
    )


if __name__ == "__main__":
    main()
