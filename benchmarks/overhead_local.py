"""Orchestration overhead of the local path: images/s of `orchestrate run` on the tiny model
against a bare loop calling the same loaded pipeline in one process.

    python benchmarks/overhead_local.py [--jobs 40] [--steps 20] [--size 64]

The bare loop does what a hand-written script would: generate, save a PNG. `orchestrate run`
adds validation, the SQLite queue with leases, attempts and timings, metadata chunks and atomic
writes. Two ratios are printed: steady state (first job start to last job end, from the
database) and end to end (the whole command, process start and model load included).
Target (issue 2): steady-state ratio at least 0.9.
"""

from __future__ import annotations

import argparse
import csv
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from _common import save

from contract.job import GenerationRequest
from workers.task import PipelineCache

ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")


def write_manifest(path: Path, jobs: int, steps: int, size: int) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "seed", "steps", "width", "height", "scheduler"])
        for i in range(jobs):
            w.writerow([f"a lighthouse on a cliff, number {i}", i, steps, size, size, "dpmpp_2m"])


def bare_loop(jobs: int, steps: int, size: int, out: Path) -> float:
    cache = PipelineCache(threads=2)
    backend, _ = cache.get("tiny")
    out.mkdir()
    t0 = time.perf_counter()
    for i in range(jobs):
        req = GenerationRequest(
            prompt=f"a lighthouse on a cliff, number {i}",
            negative_prompt="",
            seed=i,
            steps=steps,
            guidance_scale=7.5,
            width=size,
            height=size,
            scheduler="dpmpp_2m",
        )
        backend.generate(req).image.save(out / f"{i}.png")
    return jobs / (time.perf_counter() - t0)


def orchestrate_run(jobs: int, steps: int, size: int, cwd: Path) -> tuple[float, float]:
    write_manifest(cwd / "bench.csv", jobs, steps, size)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
    if "ORCHESTRATE_CACHE" in os.environ:
        env["ORCHESTRATE_CACHE"] = os.environ["ORCHESTRATE_CACHE"]
    t0 = time.perf_counter()
    subprocess.run(
        [ORCHESTRATE, "run", "bench.csv"], cwd=cwd, env=env, check=True, capture_output=True
    )
    wall = time.perf_counter() - t0
    with closing(sqlite3.connect(cwd / "orchestrate.db")) as db:
        # steady state: from the end of the first job (model loaded) to the end of the last
        first_end, last_end, n = db.execute(
            "SELECT min(finished_at), max(finished_at), count(*) FROM attempts WHERE status = 'succeeded'"
        ).fetchone()
    assert n == jobs
    return (n - 1) / (last_end - first_end), jobs / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # Interleave to spread the shared machine's noise over both.
        bare1 = bare_loop(args.jobs, args.steps, args.size, tmp / "bare1")
        steady, e2e = orchestrate_run(args.jobs, args.steps, args.size, tmp)
        bare2 = bare_loop(args.jobs, args.steps, args.size, tmp / "bare2")
    bare = (bare1 + bare2) / 2
    print(f"tiny model, {args.size}px, {args.steps} steps, {args.jobs} jobs, 2 torch threads")
    print(f"bare loop:        {bare:.2f} images/s (runs: {bare1:.2f}, {bare2:.2f})")
    print(f"orchestrate run:  {steady:.2f} images/s steady state, {e2e:.2f} images/s end to end")
    print(
        f"ratio:            {steady / bare:.3f} steady state (target >= 0.9), "
        f"{e2e / bare:.3f} end to end (includes ~4 s process start and model load)"
    )
    save(
        "overhead_local",
        {
            "jobs": args.jobs,
            "steps": args.steps,
            "size": args.size,
            "bare_images_per_s": bare,
            "bare_runs": [bare1, bare2],
            "run_steady_images_per_s": steady,
            "run_end_to_end_images_per_s": e2e,
            "ratio_steady": steady / bare,
            "ratio_end_to_end": e2e / bare,
        },
    )


if __name__ == "__main__":
    main()
