"""DPM-Solver++ at 15/20/25 steps against PNDM at 50 on the same model, prompt and seed:
UNet evaluations, wall time, speed-up vs PNDM-50, and PSNR of each image against PNDM-50's.

    python benchmarks/schedulers.py [--model tiny] [--size 64] [--repeat 3]

With the built-in tiny model (random weights) the images are noise-like, so the PSNR column
says how closely the samplers agree on this model's ODE, not how good images look; run it with
``--model /path/to/stable-diffusion-v1-5`` on a real model for the number that matters there.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time

from _common import ROOT, save

sys.path.insert(0, str(ROOT))

import numpy as np
from PIL import Image

from workers.backends import GenerationRequest
from workers.compression.palettize import psnr
from workers.task import PipelineCache

RUNS = (("pndm", 50), ("dpmpp_2m", 15), ("dpmpp_2m", 20), ("dpmpp_2m", 25), ("dpmpp_2m_karras", 20))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompt", default="a lighthouse on a cliff at dawn, oil painting")
    args = ap.parse_args()
    backend, _ = PipelineCache(threads=2).get(args.model)
    results = []
    images = {}
    for scheduler, steps in RUNS:
        req = GenerationRequest(
            prompt=args.prompt,
            negative_prompt="",
            seed=7667,
            steps=steps,
            guidance_scale=7.5,
            width=args.size,
            height=args.size,
            scheduler=scheduler,
        )
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            gen = backend.generate(req)
            times.append(time.perf_counter() - t0)
        buf = io.BytesIO()
        gen.image.save(buf, format="PNG")
        images[(scheduler, steps)] = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64)
        results.append(
            {
                "scheduler": scheduler,
                "steps": steps,
                "unet_evaluations": gen.unet_evaluations,
                "seconds": statistics.median(times),
            }
        )
    base = results[0]
    ref = images[("pndm", 50)]
    print(
        f"model {args.model}, {args.size}x{args.size}, median of {args.repeat} runs, 2 torch threads"
    )
    print(
        f"{'scheduler':<16} {'steps':>5} {'UNet evals':>10} {'seconds':>8} {'speed-up':>8} {'PSNR vs PNDM-50':>16}"
    )
    for r in results:
        r["speedup_vs_pndm50"] = base["seconds"] / r["seconds"]
        r["psnr_vs_pndm50_db"] = psnr(ref, images[(r["scheduler"], r["steps"])], cap=99.0)
        print(
            f"{r['scheduler']:<16} {r['steps']:>5} {r['unet_evaluations']:>10} {r['seconds']:>8.3f} "
            f"{r['speedup_vs_pndm50']:>7.2f}x {r['psnr_vs_pndm50_db']:>15.1f}"
        )
    save("schedulers", {"model": args.model, "size": args.size, "rows": results})


if __name__ == "__main__":
    main()
