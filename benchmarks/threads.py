"""Torch CPU threads, the OpenMP wait policy and a busy machine: seconds per image of the tiny
model (20 steps, 64 px) by thread count, wait policy, number of concurrent workers, on an idle
machine and under load.

    python benchmarks/threads.py [--repeats 3] [--cap 10]   # the full grid
    python benchmarks/threads.py --quick                    # the same grid, fewer images (< 3 min)
    python benchmarks/threads.py --size 256 --policies PASSIVE   # -> results/threads_256px.json

Each worker is a subprocess that sets ``OMP_WAIT_POLICY`` (or leaves it unset: libgomp's
default, spin then sleep) before torch is imported, as the product does, loads the pipeline
once, and then, on the parent's word, sets the thread count as the backend does
(``torch.set_num_threads``), makes one 2-step warm-up image (not timed: it starts OpenMP's
threads) and times one 20-step image. Concurrent workers are told to start together. Load is
``cpu_count`` busy-loop processes started by this script (and always killed). Rounds go
through every configuration in turn, so the machine's drift falls on all of them alike; a
configuration slower than ``--cap`` seconds per image is not run again in later rounds (its
cliff is already shown).

Figures: median and max seconds per image (the whole generation: text encoding, denoising,
decoding; not model load or PNG encoding) and the ratio of the median to the best median of the
same condition and worker count. It does not measure throughput of a whole batch, other models
or sizes, CUDA/MPS, or what other software the load stands for (a busy loop never sleeps; real
neighbours that do leave more room). Each worker also reports a hash of its pixels, which shows
whether the thread count changes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from itertools import product
from typing import IO, Any

from _common import ROOT, save

STEPS = 20
SIZE = 64
# A job whose pixels differ between 1 and 2 threads (measured; many jobs give the same pixels).
PROMPT = "a red fox in the snow"
NEGATIVE = "blurry"
SEED = 7


# --- the worker subprocess -------------------------------------------------------------------


def child(policy: str, size: int) -> None:
    """Load the tiny model, then per line ``<threads>`` on stdin: warm up, time one image and
    print a JSON line."""
    if policy == "default":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = policy  # before torch is imported, as the product does
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch  # first, so that libgomp reads the policy above, whatever workers/ sets later

    from contract.job import GenerationRequest
    from workers.task import PipelineCache

    backend, _ = PipelineCache(device="cpu", threads=1).get("tiny")

    def request(steps: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            seed=SEED,
            steps=steps,
            guidance_scale=7.5,
            width=size,
            height=size,
            scheduler="dpmpp_2m",
        )

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        threads = int(line)
        torch.set_num_threads(threads)
        backend.threads = threads
        backend.generate(request(2))  # warm-up, not timed
        print(json.dumps({"warm": True}), flush=True)
        sys.stdin.readline()  # "go": every concurrent worker starts together
        t0 = time.perf_counter()
        gen = backend.generate(request(STEPS))
        seconds = time.perf_counter() - t0
        pixels = hashlib.sha256(np.asarray(gen.image).tobytes()).hexdigest()[:16]
        out = {"seconds": seconds, "denoise_s": gen.denoise_s, "pixels": pixels}
        print(json.dumps(out), flush=True)


# --- the parent ------------------------------------------------------------------------------


class Worker:
    def __init__(self, policy: str, size: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", policy, "--size", str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def send(self, text: str) -> None:
        stdin: IO[str] = self.proc.stdin  # type: ignore[assignment]
        stdin.write(text + "\n")
        stdin.flush()

    def read(self) -> dict[str, Any]:
        stdout: IO[str] = self.proc.stdout  # type: ignore[assignment]
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_load(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run_config(workers: list[Worker], threads: int) -> list[dict[str, Any]]:
    for w in workers:
        w.send(str(threads))
    for w in workers:
        w.read()  # warm
    for w in workers:
        w.send("go")
    return [w.read() for w in workers]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3, help="rounds over every configuration")
    ap.add_argument(
        "--cap",
        type=float,
        default=10.0,
        help="seconds per image above which a configuration is not run again",
    )
    ap.add_argument("--quick", action="store_true", help="2 rounds, cap 5 s (< 3 min)")
    ap.add_argument(
        "--policies", default="default,PASSIVE", help="OMP_WAIT_POLICY values (default: unset)"
    )
    ap.add_argument("--size", type=int, default=SIZE, help="image width and height")
    ap.add_argument("--max-workers", type=int, default=2, help="concurrent workers, 1..this")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.size)
        return
    if args.quick:
        args.repeats, args.cap = 2, 5.0
    cpus = os.cpu_count() or 1
    thread_counts = sorted({1, 2, cpus})
    policies = args.policies.split(",")
    conditions = ["idle", "loaded"]
    worker_counts = list(range(1, args.max_workers + 1))
    configs = list(product(conditions, policies, worker_counts, thread_counts))
    times: dict[tuple[str, str, int, int], list[float]] = {c: [] for c in configs}
    capped: set[tuple[str, str, int, int]] = set()
    pixels: dict[tuple[int, str], set[str]] = {}
    pool: dict[str, list[Worker]] = {}
    load: list[subprocess.Popen[bytes]] = []
    t_start = time.perf_counter()
    try:
        for policy in policies:
            pool[policy] = [Worker(policy, args.size) for _ in range(args.max_workers)]
        for ws in pool.values():
            for w in ws:
                w.read()  # ready: model loaded
        for rnd in range(args.repeats):
            for condition in conditions:
                load = start_load(cpus) if condition == "loaded" else []
                time.sleep(0.5 if load else 0)
                # Alternate the order from round to round (and policy to policy).
                order = [c for c in configs if c[0] == condition]
                if rnd % 2:
                    order.reverse()
                for cfg in order:
                    if cfg in capped:
                        continue
                    _, policy, n, threads = cfg
                    results = run_config(pool[policy][:n], threads)
                    secs = [r["seconds"] for r in results]
                    times[cfg].extend(secs)
                    pixels.setdefault((threads, policy), set()).update(r["pixels"] for r in results)
                    print(
                        f"round {rnd + 1} {condition:6} {policy:7} workers {n} threads "
                        f"{threads}: " + ", ".join(f"{s:.2f}" for s in secs) + " s",
                        flush=True,
                    )
                    if max(secs) > args.cap:
                        capped.add(cfg)
                stop_load(load)
                load = []
    finally:
        stop_load(load)
        for ws in pool.values():
            for w in ws:
                w.close()
    elapsed = time.perf_counter() - t_start

    rows = []
    for cfg in configs:
        condition, policy, n, threads = cfg
        ts = times[cfg]
        rows.append(
            {
                "condition": condition,
                "omp_wait_policy": policy,
                "workers": n,
                "threads": threads,
                "images": len(ts),
                "median_s": statistics.median(ts),
                "max_s": max(ts),
                "capped": cfg in capped,
            }
        )
    for r in rows:
        peers = [
            q["median_s"]
            for q in rows
            if (q["condition"], q["workers"]) == (r["condition"], r["workers"])
        ]
        r["ratio_vs_best"] = r["median_s"] / min(peers)

    print(
        f"\ntiny model, {args.size}px, {STEPS} steps, {cpus} CPUs, {args.repeats} rounds; "
        f"seconds per image (whole generation), ratio = median / best median of the same "
        f"condition and worker count"
    )
    print(
        f"{'condition':9} {'OMP_WAIT_POLICY':15} {'workers':>7} {'threads':>7} "
        f"{'n':>3} {'median':>8} {'max':>8} {'ratio':>7}"
    )
    for r in rows:
        print(
            f"{r['condition']:9} {r['omp_wait_policy']:15} {r['workers']:7} {r['threads']:7} "
            f"{r['images']:3} {r['median_s']:8.2f} {r['max_s']:8.2f} {r['ratio_vs_best']:7.2f}"
            + ("  (capped: not rerun)" if r["capped"] else "")
        )
    by_threads = {
        t: sorted({h for (tt, _), hs in pixels.items() if tt == t for h in hs})
        for t in thread_counts
    }
    policy_free = all(len(hs) == 1 for hs in by_threads.values())
    threads_change = len({h for hs in by_threads.values() for h in hs}) > 1
    print(f"pixel hashes by thread count (every run, both policies): {by_threads}")
    print(
        f"the thread count {'changes' if threads_change else 'does not change'} the pixels; "
        f"the wait policy {'does not change them' if policy_free else 'CHANGES THEM'}"
    )
    print(f"{elapsed:.0f} s in all")
    save(
        "threads" if args.size == SIZE else f"threads_{args.size}px",
        {
            "steps": STEPS,
            "size": args.size,
            "rounds": args.repeats,
            "cap_s": args.cap,
            "quick": args.quick,
            "load_processes": cpus,
            "rows": rows,
            "job": {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED},
            "pixel_hashes": {
                f"threads={t} policy={p}": sorted(hs) for (t, p), hs in sorted(pixels.items())
            },
            "threads_change_pixels": threads_change,
            "wait_policy_changes_pixels": not policy_free,
            "elapsed_s": elapsed,
        },
    )


if __name__ == "__main__":
    main()
