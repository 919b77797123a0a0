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
import tempfile
from pathlib import Path
from typing import Any

from _common import save
from _throughput_flow import FLOW_GPU, UNET_GPU, flow_cpu_rows, flow_gpu_rows
from _throughput_paths import measure, register

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Before diffusers is first imported (by _architectures too): its notices (a cast of a model
# with nothing to keep in fp32, a missing accelerate) would bury the rows.
for _var in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
    os.environ.setdefault(_var, "error")


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
