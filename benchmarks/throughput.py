"""Throughput of the worker path (SQLite queue, leases, batches, PNG metadata, atomic writes)
against a bare diffusers loop on the same loaded pipeline, in one process, same batch size.

    python benchmarks/throughput.py              # CPU rows: tiny (64 px) and SD 1.5's UNet (128 px)
    python benchmarks/throughput.py --flow-cpu   # CPU rows: tiny-sd3, tiny-flux, tiny-flux2 (64 px,
                                                 # 1 thread, fp32, 8 DPM-Solver++ steps, batch 1/4)
    python benchmarks/throughput.py --gpu        # GPU rows (CUDA or MPS) of --models (default all):
        sd15, sdxl            SD 1.5 512 px, SDXL 1024 px, 20 DPM-Solver++ steps, batch 1/4/8/16
                              (--batches), fp16, without and with --compile
        sd35m                 SD 3.5 Medium 1024 px, 28 DPM-Solver++ steps, CFG 4.5
        flux1-schnell         FLUX.1 [schnell] 1024 px, 4 FlowMatch Euler steps, no guidance
        klein4b               FLUX.2 [klein] 4B (step-distilled) 1024 px, 4 FlowMatch Euler steps,
                              no guidance; the flow rows: batch 1/4 (--flow-batches), bf16,
                              without and with --compile (the transformer)
    python benchmarks/throughput.py --gpu-flow   # --gpu, the flow models of --models only
    python benchmarks/throughput.py --gpu-smoke  # the GPU rows' code on the CPU, toy sizes
    python benchmarks/throughput.py --sizes      # SDXL UNet sizes at uniform and mixed-bit averages

Each row: images/s of both paths after a warm-up on both sides (model loaded, first image
made), alternating bare / worker ``--repeats`` times (median; the GPU rows once), their ratio
(target: >= 0.97), and the worker's time per image by stage (from its own attempt records; a
batch's stage times are shared out): text encoding, denoising, VAE decoding, PNG encoding, and
what the worker spends outside the task (claims, leases, writes). Random weights: speed
depends on the shapes, not the weights.

The flow GPU rows build each pipeline whole with random weights, every component at its real
size (``_architectures.FLOW_PIPELINES``), straight on the GPU in bf16, the dtype the backend
runs flow models in there: SD 3.5 Medium (MMDiT 2.24B, CLIP-L, CLIP-G, T5-XXL 4.76B; 15.2 GiB
of weights), FLUX.1 schnell (transformer 11.9B, CLIP-L, T5-XXL; 31.4 GiB), Klein 4B
(transformer 3.88B, Qwen3-4B, whose layers 9/18/27 it reads; 14.9 GiB), with their VAEs (the
16-channel ``AutoencoderKL``; ``AutoencoderKLFlux2``). Tokenizers are the built-in toys', told to
hold each family's text length (T5: 256 tokens, Qwen3: 512, CLIP: 77), so every prompt is
padded to the real token count; the ids differ from the real tokenizers', which changes
nothing in the time. A model is built once (seconds), run uncompiled, then compiled; each row
records the device name, the library versions, the dtype, each component's weights and the
peak GPU memory of each path; the file (throughput_gpu_flow.json) keeps the rows of models run
in an earlier call on the same device and versions, so ``--models`` may split a run in parts.
Expected peak GPU memory (weights, plus the VAE decoding a batch of 1024 px images at once in
the bare loop, about 1.9 GiB an image in bf16, the largest activation; the worker decodes
image by image): SD 3.5 Medium ~18 GiB at batch 1, ~23 GiB at batch 4; FLUX.1 schnell ~34 and
~39 GiB; Klein 4B ~17 and ~23 GiB: each fits an 80 GB H100, FLUX.1 no 24-32 GB card. From
the models' FLOPs, a whole ``--gpu-flow`` run should take about 12-15 minutes on an H100 (SD
3.5 Medium ~5, FLUX.1 schnell ~4, Klein 4B ~3, compiles included): one model a call
(``--models``) fits a short lease. As of 2026-12-06 the flow GPU rows have not been run on a
GPU (none was lent); ``--gpu-smoke`` runs their code on the CPU: the same builders at toy
widths (``toy=True``), 64 px, 2 steps, then the built-in toys.

What it does not measure: model load time (the GPU rows build in memory: no weights are
read), process start, a second machine (the RQ path's extra hop is
benchmarks/overhead_rq.py), or anything the pixels say; nor the real tokenizers' speed (a
millisecond a prompt), low-memory offload, or a GPU's first compile of a shape beyond the
warm-up's time (``warmup_s``).

On the CPU a worker's batch runs the denoiser image by image (bit-identical to the lone image,
``DiffusersBackend.fused_batches``), so the bare loop's fused batch there is what that
identity costs; on CUDA/MPS both sides fuse the batch. The worker encodes each prompt and
decodes each image on its own, where a bare loop's pipeline call does a batch's at once: on
the CPU toys, whose denoising takes tens of milliseconds, those calls and the worker's own
per-image work (10-15 ms of claims and writes) are a large share
(throughput_flow_cpu.json, 2026-12-06, 1 thread: ratios 0.82-0.98 at batch 1, 0.32-0.49 at
batch 4 image by image, 0.57-0.79 at batch 4 fused); at real sizes the denoiser's seconds
dwarf them (the tiny and SD 1.5 rows: >= 1.0).
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
# Before diffusers is first imported (by _architectures too): its notices (a cast of a model
# with nothing to keep in fp32, a missing accelerate) would bury the rows.
for _var in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
    os.environ.setdefault(_var, "error")

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
    plan: list[tuple[str, str | None, int]]
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


# The flow-matching GPU rows: --models name -> (row name, _architectures builder, steps,
# scheduler, guidance_scale), each model as it is usually run. SD 3.5 Medium: 28 steps with
# CFG 4.5 (two transformer rows an image); FLUX.1 schnell: 4 steps, no guidance (the scale is
# recorded and does nothing); Klein 4B, step-distilled: 4 steps, no guidance (its pipeline
# warns of a scale above 1).
FLOW_GPU: dict[str, tuple[str, str, int, str, float]] = {
    "sd35m": ("sd35m-arch", "sd35_medium_pipeline", 28, "dpmpp_2m", 4.5),
    "flux1-schnell": ("flux1-schnell-arch", "flux1_schnell_pipeline", 4, "flow_euler", 0.0),
    "klein4b": ("klein4b-arch", "klein_4b_pipeline", 4, "flow_euler", 1.0),
}
UNET_GPU = ("sd15", "sdxl")
# The built-in flow toys at their layouts' usual guidance: tiny-sd3 CFG as SD 3.5 Medium's;
# tiny-flux is FLUX.1 dev's layout (distilled guidance, an input of the model); tiny-flux2 an
# undistilled Klein (true CFG, two transformer calls a step).
FLOW_TOYS: dict[str, float] = {"tiny-sd3": 4.5, "tiny-flux": 3.5, "tiny-flux2": 4.0}


def weights_gib(pipe: Any) -> dict[str, float]:
    """Each component's parameters and buffers, GiB as they are held."""
    import torch

    sizes = {}
    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module):
            tensors = [*part.parameters(), *part.buffers()]
            sizes[name] = round(sum(t.numel() * t.element_size() for t in tensors) / 2**30, 3)
    return sizes


def release(device: str) -> None:
    """Let go of a model's memory before the next is built (compiled graphs included)."""
    import gc

    import torch

    torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def flow_gpu_rows(args: argparse.Namespace, tmp: Path, smoke: bool) -> list[dict[str, Any]]:
    """SD 3.5 Medium, FLUX.1 schnell and FLUX.2 Klein 4B at 1024 px: random weights, every
    component at full size (``_architectures.FLOW_PIPELINES``), built on the GPU in bf16 (the
    dtype the backend runs flow models in there); batch 1 and 4 (``--flow-batches``), without
    and with ``--compile`` (the transformer compiled; the bare loop calls the same pipeline,
    so the same compiled module). The pipeline is built once a model, and compiled after its
    uncompiled rows. With ``smoke``: the same code on the CPU, the same pipelines at toy
    widths (64 px, 2 steps, batch 1 and 2), then the built-in toys loaded as a user's model."""
    import _architectures
    import torch

    from workers.task import PipelineCache
    from workers.tuning import Tuning

    device = "cpu" if smoke else args.device
    size = 64 if smoke else 1024
    batches = [1, 2] if smoke else args.flow_batches
    compiles = [False, True] if device == "cuda" else [False]  # --compile is CUDA only
    models = list(FLOW_GPU) if smoke else [m for m in args.models if m in FLOW_GPU]
    rows = []
    release(device)
    for key in models:
        name, builder, steps, scheduler, guidance = FLOW_GPU[key]
        t0 = time.perf_counter()
        pipe = getattr(_architectures, builder)(device=device, dtype=torch.bfloat16, toy=smoke)
        build_s = time.perf_counter() - t0
        weights = weights_gib(pipe)
        held = (
            f" (GPU memory held now {torch.cuda.memory_allocated() / 2**30:.1f} GiB)"
            if device == "cuda"
            else ""
        )
        print(
            f"{name}: built in {build_s:.1f} s on {device}, weights (GiB, bf16): "
            + ", ".join(f"{k} {v:.2f}" for k, v in weights.items())
            + f"; total {sum(weights.values()):.2f}{held}",
            flush=True,
        )
        for compiled in compiles:
            cache = PipelineCache(
                device=device, threads=args.threads, tuning=Tuning(compile=compiled)
            )
            register(cache, name, pipe, device=device)
            for batch in batches:
                row = measure(
                    cache,
                    name,
                    size=size,
                    steps=2 if smoke else steps,
                    batch=batch,
                    images=max(2 * batch, 4 if smoke else 8),
                    repeats=1,
                    tmp=tmp,
                    scheduler=scheduler,
                    guidance=guidance,
                )
                rows.append({**row, "build_s": round(build_s, 1), "weights_gib": weights})
            cache.current = None
        del pipe
        release(device)
    if smoke:
        for toy, guidance in FLOW_TOYS.items():
            cache = PipelineCache(device="cpu", threads=args.threads)
            for batch in batches:
                rows.append(
                    measure(
                        cache,
                        toy,
                        size=64,
                        steps=2,
                        batch=batch,
                        images=2 * batch,
                        repeats=1,
                        tmp=tmp,
                        guidance=guidance,
                    )
                )
    return rows


def flow_cpu_rows(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """The built-in flow toys (tiny-sd3, tiny-flux, tiny-flux2) at 64 px, fp32, 8 DPM-Solver++
    steps at their usual guidance (FLOW_TOYS): batch 1, a batch of 4 as the worker runs it by
    default (the transformer image by image: byte-identical to the lone images) and a batch of
    4 with ``--fused-batches``, each against a bare loop of the same batch (which fuses)."""
    from workers.task import PipelineCache
    from workers.tuning import Tuning

    rows = []
    for toy, guidance in FLOW_TOYS.items():
        exact = PipelineCache(device="cpu", threads=args.threads)
        fused = PipelineCache(device="cpu", threads=args.threads, tuning=Tuning(fused_batches=True))
        for cache, batch in ((exact, 1), (exact, 4), (fused, 4)):
            rows.append(
                measure(
                    cache,
                    toy,
                    size=64,
                    steps=8,
                    batch=batch,
                    images=args.images,
                    repeats=args.repeats,
                    tmp=tmp,
                    guidance=guidance,
                )
            )
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
        recipe: dict[str, int | str] = {}
        done = 0
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


def kept_rows(about: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` after the rows throughput_gpu_flow.json already holds of other models on the
    same device and versions: the flow models may be run one call at a time (``--models``)."""
    import json

    from _common import RESULTS

    path = RESULTS / "throughput_gpu_flow.json"
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return rows
    if {k: before.get(k) for k in about} != about:
        return rows
    ran = {r["model"] for r in rows}
    return [r for r in before.get("rows", []) if r.get("model") not in ran] + rows


def versions() -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="GPU rows (CUDA or MPS) of --models")
    ap.add_argument(
        "--gpu-flow", action="store_true", help="--gpu, the flow-matching models of --models only"
    )
    ap.add_argument(
        "--gpu-smoke", action="store_true", help="the GPU rows' code on the CPU, toy sizes"
    )
    ap.add_argument(
        "--flow-cpu", action="store_true", help="CPU rows of the built-in flow toys (1 thread)"
    )
    ap.add_argument("--sizes", action="store_true", help="SDXL UNet size table only")
    ap.add_argument("--device", default="cuda", choices=["cuda", "mps"])
    ap.add_argument(
        "--models",
        nargs="+",
        default=[*UNET_GPU, *FLOW_GPU],
        choices=[*UNET_GPU, *FLOW_GPU],
        help="the GPU rows' models (default: all)",
    )
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 16], help="UNet rows")
    ap.add_argument("--flow-batches", nargs="+", type=int, default=[1, 4], help="flow rows")
    ap.add_argument("--threads", type=int, default=None, help="2; 1 with --flow-cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--images", type=int, default=16, help="images a --flow-cpu row makes")
    args = ap.parse_args()
    if args.threads is None:
        args.threads = 1 if args.flow_cpu else 2
    if args.gpu_flow:
        args.gpu = True
        args.models = [m for m in args.models if m in FLOW_GPU]
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
            about = {"device_name": name, "versions": versions()}
            if args.gpu_smoke:
                rows = gpu_rows(args, tmp, smoke=True) + flow_gpu_rows(args, tmp, smoke=True)
                save("throughput_gpu_smoke", {**about, "rows": rows})
                return
            if any(m in UNET_GPU for m in args.models):
                save("throughput_gpu", {**about, "rows": gpu_rows(args, tmp, smoke=False)})
            if any(m in FLOW_GPU for m in args.models):
                rows = flow_gpu_rows(args, tmp, smoke=False)
                note = (
                    "random weights, every component at full size, built on the GPU in bf16; "
                    "tokenizers of the built-in toys (token ids differ from the real "
                    "tokenizers', the token counts a prompt is padded to do not)"
                )
                save("throughput_gpu_flow", {**about, "rows": kept_rows(about, rows), "note": note})
            return
        if args.flow_cpu:
            load_before = os.getloadavg()
            rows = flow_cpu_rows(args, tmp)
            save(
                "throughput_flow_cpu",
                {
                    "versions": versions(),
                    "threads": args.threads,
                    # other processes' load shows in the noise of the rows, not in the ratio
                    # (the two paths alternate)
                    "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
                    "rows": rows,
                    "note": "CPU, fp32, torch threads as given; the built-in flow toys "
                    "(random weights) at 64 px, 8 dpmpp_2m steps at each layout's usual "
                    "guidance; auto batch size on the CPU is 1.",
                },
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
