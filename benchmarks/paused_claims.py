"""Claims behind a big paused batch: what pausing costs the workers that keep going.

    python benchmarks/paused_claims.py [--paused 300000] [--claims 300]

A batch of ``--paused`` jobs at a higher priority is paused; another batch stays runnable.
Each claim then has to walk past every paused job ranked ahead of the first runnable one.
Both ways of claiming run on the same database, one after the other, under the same
conditions: "one statement" (pick and take inside the write transaction, what a claim does when
nothing is paused) and "two steps" (the pick read without the write lock, the take re-checked
under it, what a claim does while something is paused). Figures: claim latency and how long
each claim held SQLite's write lock (median and max), in one process. Not measured: several
claiming processes at once (the lock hold is what they would wait on), or the coordinator's
dispatch (the same two steps).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import save
from queue_ops import LockMeter, fixed, manifest_bytes

from orchestrator.database import database_url, open_engine
from orchestrator.manifest import parse_manifest
from orchestrator.store import JobStore, WorkerIdentity


def run(store: JobStore, meter: LockMeter, claims: int) -> dict[str, float]:
    me = WorkerIdentity(name="bench", host="h", pid=1)
    latencies = []
    meter.holds.clear()
    for _ in range(claims):
        t0 = time.perf_counter()
        claim = store.claim(me, lease_seconds=60)
        latencies.append(time.perf_counter() - t0)
        assert claim is not None and claim.job["batch_id"] == 2
    holds = sorted(meter.holds)
    return {
        "claim_median_ms": statistics.median(latencies) * 1000,
        "claim_max_ms": max(latencies) * 1000,
        "lock_hold_median_ms": statistics.median(holds) * 1000,
        "lock_hold_max_ms": holds[-1] * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--paused", type=int, default=300_000)
    ap.add_argument("--claims", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        store = JobStore(open_engine(database_url(str(Path(d) / "paused.db"))))
        big = parse_manifest(manifest_bytes(args.paused), "big.csv", native_size=fixed)
        t0 = time.perf_counter()
        store.submit(big, name="paused", defaults={"priority": 5}, max_attempts=3)
        with store.engine.begin() as conn:  # every job of the paused batch ranks first
            conn.exec_driver_sql("UPDATE jobs SET priority = 10 WHERE batch_id = 1")
        small = parse_manifest(
            manifest_bytes(2 * args.claims + 10, offset=args.paused), "small.csv", native_size=fixed
        )
        store.submit(small, name="runs", defaults={}, max_attempts=3)
        store.pause(1)
        fill_s = time.perf_counter() - t0
        meter = LockMeter(store.engine)
        run(store, meter, 5)  # warm-up, both ways
        one = store.has_pauses
        store.has_pauses = lambda: False  # type: ignore[method-assign]
        run(store, meter, 5)
        single = run(store, meter, args.claims)
        store.has_pauses = one  # type: ignore[method-assign]
        two = run(store, meter, args.claims)
    ratio = single["lock_hold_median_ms"] / two["lock_hold_median_ms"]
    print(
        f"{args.paused:,} paused jobs ranked ahead (filled in {fill_s:.0f}s), {args.claims} claims each:"
    )
    for name, r in (("one statement", single), ("two steps", two)):
        print(
            f"  {name:13}: claim {r['claim_median_ms']:.1f} ms (max {r['claim_max_ms']:.1f}), "
            f"write lock held {r['lock_hold_median_ms']:.2f} ms (max {r['lock_hold_max_ms']:.2f})"
        )
    print(f"  the write lock is held {ratio:.0f}x shorter in two steps")
    save(
        "paused_claims",
        {
            "paused_jobs": args.paused,
            "claims": args.claims,
            "one_statement": single,
            "two_steps": two,
            "lock_hold_ratio": ratio,
        },
    )


if __name__ == "__main__":
    main()
