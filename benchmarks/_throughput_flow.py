"""The flow-matching rows of ``throughput.py``: SD 3.5 Medium, FLUX.1 schnell and FLUX.2 Klein 4B
at full size on a GPU (``--gpu-flow``, and in ``--gpu``), their code at toy widths on the CPU
(``--gpu-smoke``), and the built-in flow toys on the CPU (``--flow-cpu``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _throughput_paths import measure, register

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
# tiny-zimage: Z-Image's CFG (its timing was a test's bound before; the committed results
# predate its row).
FLOW_TOYS: dict[str, float] = {
    "tiny-sd3": 4.5,
    "tiny-flux": 3.5,
    "tiny-flux2": 4.0,
    "tiny-zimage": 4.0,
}


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
