"""Orchestration overhead of the local path: images/s of `orchestrate run` on the tiny model
against a bare loop calling the same loaded pipeline in one process.

    python benchmarks/overhead_local.py [--jobs 40] [--steps 20] [--size 64] [--threads N]

The bare loop does what a hand-written script would: generate, save a PNG. `orchestrate run`
adds validation, the SQLite queue with leases, attempts and timings, metadata chunks and atomic
writes. Both sides hold everything else equal: the same torch thread count (``--threads``,
default the tiny model's own, as `orchestrate run` uses it; it used to be 2 for the loop and 1
for the run, and the ratio measured the thread count), one process each, fp32 on the CPU, and
the same warm-up (the first image of each side is left out of its steady-state rate). Two ratios
are printed: steady state (end of the first image to end of the last) and end to end (the whole
command, process start and model load included, against the loop's steady state).
Target (issue 2): steady-state ratio at least 0.9. Not measured: the RQ path
(``overhead_rq.py``), a GPU, concurrency.
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
from workers.task import PipelineCache, threads_for

ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")


def write_manifest(path: Path, jobs: int, steps: int, size: int) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "seed", "steps", "width", "height", "scheduler"])
        for i in range(jobs):
            w.writerow([f"a lighthouse on a cliff, number {i}", i, steps, size, size, "dpmpp_2m"])


def bare_loop(jobs: int, steps: int, size: int, out: Path, threads: int) -> float:
    """Images/s from the end of the first image to the end of the last (the first warms up)."""
    cache = PipelineCache(threads=threads)
    backend, _ = cache.get("tiny")
    out.mkdir()
    t0 = 0.0
    for i in range(jobs):
        if i == 1:
            t0 = time.perf_counter()
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
    return (jobs - 1) / (time.perf_counter() - t0)


def orchestrate_run(
    jobs: int, steps: int, size: int, cwd: Path, threads: int
) -> tuple[float, float]:
    write_manifest(cwd / "bench.csv", jobs, steps, size)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
    if "ORCHESTRATE_CACHE" in os.environ:
        env["ORCHESTRATE_CACHE"] = os.environ["ORCHESTRATE_CACHE"]
    t0 = time.perf_counter()
    subprocess.run(
        [ORCHESTRATE, "run", "bench.csv", "--threads", str(threads)],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
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
    ap.add_argument(
        "--threads", type=int, default=threads_for("tiny"), help="torch threads on both sides"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # Interleave to spread the shared machine's noise over both.
        bare1 = bare_loop(args.jobs, args.steps, args.size, tmp / "bare1", args.threads)
        steady, e2e = orchestrate_run(args.jobs, args.steps, args.size, tmp, args.threads)
        bare2 = bare_loop(args.jobs, args.steps, args.size, tmp / "bare2", args.threads)
    bare = (bare1 + bare2) / 2
    print(
        f"tiny model, {args.size}px, {args.steps} steps, {args.jobs} jobs, "
        f"{args.threads} torch thread(s) on both sides"
    )
    print(f"bare loop:        {bare:.2f} images/s (runs: {bare1:.2f}, {bare2:.2f})")
    print(f"orchestrate run:  {steady:.2f} images/s steady state, {e2e:.2f} images/s end to end")
    print(
        f"ratio:            {steady / bare:.3f} steady state (target >= 0.9), "
        f"{e2e / bare:.3f} end to end (includes ~4 s process start and model load)"
    )
    print("not measured: the RQ path (overhead_rq.py), a GPU, several workers at once")
    save(
        "overhead_local",
        {
            "jobs": args.jobs,
            "steps": args.steps,
            "size": args.size,
            "threads": args.threads,
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
