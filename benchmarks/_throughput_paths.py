"""The two paths ``throughput.py`` compares on one loaded pipeline, and how a row measures them:
the worker path (SQLite queue, leases, batches, PNG metadata, atomic writes) and a bare diffusers
loop, alternated after a warm-up on both sides."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

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
    scheduler: str = "dpmpp_2m",
    guidance: float | None = None,
) -> dict[str, Any]:
    """Images/s of the local worker (what `orchestrate run` runs) over ``jobs``; ``guidance``:
    the manifest's guidance_scale (None: the manifest's default, 7.5)."""
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
    columns = ["prompt", "seed", "model", "steps", "width", "height", "scheduler"]
    w.writerow(columns + ([] if guidance is None else ["guidance_scale"]))
    for prompt, seed in jobs:
        w.writerow(
            [prompt, seed, model, steps, size, size, scheduler]
            + ([] if guidance is None else [guidance])
        )
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


def bare_flow_loop(
    backend: Any,
    jobs: list[tuple[str, int]],
    size: int,
    steps: int,
    batch: int,
    tmp: Path,
    scheduler: str,
    guidance: float,
) -> float:
    """Images/s of a hand-written loop over a flow model's pipeline: ``batch`` prompts a call
    with the family's usual arguments (SD3: an empty negative prompt for its CFG; Klein: the
    Qwen3 layers its transformer reads), the worker's sampler and text length, one CPU
    generator per image, each image saved as a PNG."""
    import torch

    from workers.backends import flow
    from workers.models import families
    from workers.models.schedulers import build_scheduler

    pipe, info = backend.pipe, backend.info
    options: dict[str, Any] = {
        "max_sequence_length": flow.max_sequence_length(pipe, info),
        "guidance_scale": guidance,
    }
    if info.pipeline == families.FLUX2_KLEIN_PIPELINE:
        options["text_encoder_out_layers"] = flow.klein_text_layers(info)
    out = Path(tempfile.mkdtemp(dir=tmp))
    t0 = time.perf_counter()
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        # the model's own scheduler config (the worker keeps it): its shift, static or dynamic
        pipe.scheduler = build_scheduler(scheduler, backend._scheduler_config, families.FLOW)
        if info.pipeline == families.SD3_PIPELINE:
            options["negative_prompt"] = [""] * len(chunk)
        images = pipe(
            prompt=[p for p, _ in chunk],
            num_inference_steps=steps,
            height=size,
            width=size,
            generator=[torch.Generator("cpu").manual_seed(s) for _, s in chunk],
            **options,
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
    scheduler: str = "dpmpp_2m",
    guidance: float | None = None,
) -> dict[str, Any]:
    """One row: ``model`` (loaded by ``cache``, or registered there) through the worker path
    and a bare loop at ``batch``. A flow model's row needs its ``guidance``; a UNet's bare loop
    runs DPM-Solver++ at 7.5, as its worker path does with the manifest's defaults."""
    import torch

    backend, _ = cache.get(model)
    flow = backend._flow
    if flow and guidance is None:
        raise ValueError(f"{model}: a flow model's row needs its guidance scale")
    if not flow and (scheduler, guidance) not in (("dpmpp_2m", None), ("dpmpp_2m", 7.5)):
        raise ValueError(f"{model}: the UNet rows' bare loop runs dpmpp_2m at guidance 7.5")

    cuda = backend.device == "cuda"
    # Peak GPU memory of each path, from a reset before each of its runs (the worker resets
    # it itself before each batch, which only narrows its figure to a batch: all are alike).
    peaks: dict[str, float] = {"bare": 0.0, "worker": 0.0}

    def peak(path: str) -> None:
        if cuda:
            peaks[path] = max(peaks[path], torch.cuda.max_memory_allocated() / 2**30)

    def bare_run(chunk: list[tuple[str, int]]) -> float:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if flow:
            assert guidance is not None
            rate = bare_flow_loop(backend, chunk, size, steps, batch, tmp, scheduler, guidance)
        else:
            rate = bare_loop(backend.pipe, chunk, size, steps, batch, tmp)
        peak("bare")
        return rate

    def worker_run(chunk: list[tuple[str, int]]) -> dict[str, Any]:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        out = worker_path(cache, model, chunk, size, steps, batch, tmp, scheduler, guidance)
        peak("worker")
        return out

    jobs = prompts(images)
    # Warm-up on both sides: kernels chosen, caches filled, compiled graphs built for this
    # batch shape.
    t0 = time.perf_counter()
    bare_run(jobs[:batch])
    worker_run(jobs[:batch])
    warmup_s = time.perf_counter() - t0
    bare, work = [], []
    detail: dict[str, Any] = {}
    for _ in range(repeats):
        bare.append(bare_run(jobs))
        detail = worker_run(jobs)
        work.append(detail["images_per_s"])
    row = {
        "model": model,
        "family": backend.family,
        "device": backend.device,
        "dtype": backend.dtype,
        "tuning": backend.tuning_label,
        "size": size,
        "steps": steps,
        "scheduler": scheduler,
        "guidance_scale": 7.5 if guidance is None else guidance,
        "batch": batch,
        "images": images,
        "repeats": repeats,
        "bare_images_per_s": statistics.median(bare),
        "worker_images_per_s": statistics.median(work),
        "ratio": statistics.median(work) / statistics.median(bare),
        "worker_per_image_s": {k: round(v, 4) for k, v in detail["per_image_s"].items()},
        "worker_batch_sizes": detail["batch_sizes"],
        "fused_batches": backend.fused_batches,
        "warmup_s": round(warmup_s, 2),
    }
    if flow:
        row["guidance"] = backend.info.guidance  # what the scale meant: cfg, distilled, none
        row["text_tokens"] = backend._text_length  # T5's or Qwen3's
    if cuda:
        row["peak_gpu_memory_gib"] = {k: round(v, 2) for k, v in peaks.items()}
    stage = row["worker_per_image_s"]
    print(
        f"{model:18s} {size:5d}px {steps:3d} steps batch {batch:2d} {row['tuning'] or '-':14s} "
        f"bare {row['bare_images_per_s']:7.3f} img/s  worker {row['worker_images_per_s']:7.3f} img/s  "
        f"ratio {row['ratio']:.3f}\n"
        f"{'':18s} worker s/img: text {stage['text_encode_s']:.3f}  denoise "
        f"{stage['denoise_s']:.3f}  decode {stage['decode_s']:.3f}  PNG {stage['encode_s']:.3f}  "
        f"outside the task {stage['outside_task_s']:.3f}"
        + (
            f"\n{'':18s} peak GPU memory: bare {peaks['bare']:.1f} GiB, worker "
            f"{peaks['worker']:.1f} GiB"
            if cuda
            else ""
        ),
        flush=True,
    )
    return row


def register(cache: Any, name: str, pipe: Any, **kw: Any) -> None:
    """Make an in-memory pipeline the cache's model ``name`` (as if loaded from a folder)."""
    from workers.backends.diffusers import DiffusersBackend

    cache.current = DiffusersBackend(
        name, pipeline=pipe, threads=cache.threads, tuning=cache.tuning, **kw
    )
