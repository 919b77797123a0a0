"""Queue operations at scale: manifest validate+insert rate, status queries at 1M jobs, and
claim throughput with two processes (checking that no job is claimed twice).

    python benchmarks/queue_ops.py [--rows 100000] [--jobs 1000000] [--claims 2000] [--big 1000000]

Targets: 100k rows in under 5 s; status under 50 ms at 1M jobs; no double claims; a
1,000,000-row submit never holds the write lock for more than about a second at a time.
"""

from __future__ import annotations

import argparse
import csv
import io
import multiprocessing
import random
import statistics
import tempfile
import time
from pathlib import Path

from _common import save

from orchestrator.database import database_url, open_engine
from orchestrator.manifest import parse_manifest
from orchestrator.status import overview
from orchestrator.store import JobStore, WorkerIdentity

SCHEDULERS = ["dpmpp_2m", "dpmpp_2m_karras", "pndm", "euler", "ddim"]


def manifest_bytes(rows: int, offset: int = 0) -> bytes:
    rng = random.Random(offset)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "prompt",
            "negative_prompt",
            "seed",
            "steps",
            "guidance_scale",
            "width",
            "height",
            "scheduler",
            "priority",
            "tags",
        ]
    )
    for i in range(offset, offset + rows):
        steps, scheduler = rng.choice([15, 20, 25]), rng.choice(SCHEDULERS)
        w.writerow(
            [
                f'a photo of object {i}, studio lighting, "detailed"',
                "blurry, low quality",
                i,
                50 if scheduler == "pndm" else steps,  # pndm needs 40+ on tiny (submit refuses)
                7.5,
                512,
                512,
                scheduler,
                rng.randint(0, 3),
                "bench",
            ]
        )
    return buf.getvalue().encode()


def timed(fn, repeat: int = 20) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median and max milliseconds over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


def fixed(_m: str) -> tuple[int, int]:
    return (512, 512)


def bench_submit(tmp: Path, rows: int) -> dict[str, float]:
    data = manifest_bytes(rows)
    store = JobStore(open_engine(database_url(str(tmp / "submit.db"))))
    t0 = time.perf_counter()
    m = parse_manifest(data, "bench.csv", native_size=fixed)
    t1 = time.perf_counter()
    result = store.submit(m, name="bench", defaults={}, max_attempts=3)
    t2 = time.perf_counter()
    assert result.added == rows
    t3 = time.perf_counter()
    again = store.submit(
        parse_manifest(data, "bench.csv", native_size=fixed),
        name="bench",
        defaults={},
        max_attempts=3,
    )
    t4 = time.perf_counter()
    assert again.added == 0 and again.duplicates == rows
    return {
        "rows": rows,
        "validate_s": t1 - t0,
        "insert_s": t2 - t1,
        "total_s": t2 - t0,
        "rows_per_s": rows / (t2 - t0),
        "resubmit_all_duplicates_s": t4 - t3,
    }


class LockMeter:
    """How long each write transaction of an engine holds SQLite's write lock (BEGIN
    IMMEDIATE to COMMIT), from the engine's own statements."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        from sqlalchemy import event

        self.holds: list[float] = []
        self._began: dict[int, float] = {}

        @event.listens_for(engine, "after_cursor_execute")
        def after(conn, _cursor, statement, *_a) -> None:  # type: ignore[no-untyped-def]
            if statement == "BEGIN IMMEDIATE":
                self._began[id(conn)] = time.perf_counter()
            elif statement in ("COMMIT", "ROLLBACK") and id(conn) in self._began:
                self.holds.append(time.perf_counter() - self._began.pop(id(conn)))


def _small_writer(path: str, stop: str, out) -> None:  # type: ignore[no-untyped-def]
    """Another process's short write transactions (a lease renewal's size), timed."""
    import os
    import sqlite3

    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    waits = []
    while not os.path.exists(stop):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE batches SET name = name WHERE id = 1")
        conn.execute("COMMIT")
        waits.append(time.perf_counter() - t0)
        time.sleep(0.05)
    out.put(waits)


def bench_big_submit(tmp: Path, rows: int) -> dict[str, float]:
    """A huge manifest submitted while another process keeps writing: the longest lock hold
    of the submit and the longest wait of the other writer (issue 8: about a second)."""
    url = database_url(str(tmp / "big.db"))
    store = JobStore(open_engine(url))
    store.submit(
        parse_manifest(b"prompt\nfirst\n", "x.csv", native_size=fixed),
        name="x",
        defaults={},
        max_attempts=3,
    )
    meter = LockMeter(store.engine)
    t0 = time.perf_counter()
    m = parse_manifest(manifest_bytes(rows), "big.csv", native_size=fixed)
    t1 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    stop = tmp / "stop"
    writer = ctx.Process(target=_small_writer, args=(str(tmp / "big.db"), str(stop), out))
    writer.start()
    time.sleep(1.0)
    t2 = time.perf_counter()
    result = store.submit(m, name="big", defaults={}, max_attempts=3)
    t3 = time.perf_counter()
    stop.touch()
    waits = out.get(timeout=120)
    writer.join(60)
    assert result.added == rows
    holds = sorted(meter.holds)
    return {
        "rows": rows,
        "validate_s": t1 - t0,
        "submit_s": t3 - t2,
        "write_transactions": len(holds),
        "longest_lock_hold_s": holds[-1],
        "p99_lock_hold_s": holds[int(len(holds) * 0.99)],
        "other_writer_transactions": len(waits),
        "other_writer_longest_wait_s": max(waits),
    }


def bench_status(tmp: Path, jobs: int) -> dict[str, float]:
    url = database_url(str(tmp / "status.db"))
    store = JobStore(open_engine(url))
    chunk = 100_000
    t0 = time.perf_counter()
    for off in range(0, jobs, chunk):
        m = parse_manifest(
            manifest_bytes(min(chunk, jobs - off), off), "bench.csv", native_size=fixed
        )
        store.submit(m, name=f"part {off // chunk}", defaults={}, max_attempts=3)
    fill_s = time.perf_counter() - t0
    # A realistic mix: most done, some failed, a few running, the rest pending; with attempts.
    with store.engine.connect() as conn:
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql(
            "INSERT INTO attempts (job_id, batch_id, number, status, worker, host, started_at, finished_at, "
            "queue_wait_s, load_s, text_encode_s, denoise_s, decode_s, encode_s, total_s, peak_mem_mb) "
            "SELECT id, batch_id, 1, 'succeeded', 'w', 'h', 0, 1, 1.0, 0, 0.02, 5.0, 0.5, 0.01, 5.6, 4000 "
            "FROM jobs WHERE id % 10 < 6"
        )
        conn.exec_driver_sql("UPDATE jobs SET status = 'succeeded' WHERE id % 10 < 6")
        conn.exec_driver_sql("UPDATE jobs SET status = 'failed' WHERE id % 10 = 6")
        conn.exec_driver_sql("UPDATE jobs SET status = 'running' WHERE id % 1000 = 7")
        conn.exec_driver_sql("COMMIT")
        conn.exec_driver_sql("ANALYZE")
    counts = store.count_jobs()
    assert sum(counts.values()) == jobs
    counts_ms, counts_max = timed(store.count_jobs)
    batch_ms, _ = timed(lambda: store.count_jobs(1))
    overview_ms, overview_max = timed(lambda: overview(store), repeat=5)
    claim_ms, _ = timed(
        lambda: store.claim(WorkerIdentity("bench", "h", 1), lease_seconds=30), repeat=50
    )
    return {
        "jobs": jobs,
        "fill_s": fill_s,
        "status_counts_ms": counts_ms,
        "status_counts_max_ms": counts_max,
        "batch_counts_ms": batch_ms,
        "status_overview_ms": overview_ms,
        "status_overview_max_ms": overview_max,
        "claim_at_1m_ms": claim_ms,
    }


def _claimer(url: str, name: str, n: int, out) -> None:  # type: ignore[no-untyped-def]
    store = JobStore(open_engine(url))
    me = WorkerIdentity(name, "h", 0)
    got = []
    t0 = time.perf_counter()
    while len(got) < n and (c := store.claim(me, lease_seconds=60)) is not None:
        got.append(c.job["id"])
        store.complete(c, f"/out/{c.job['id']}.png", "0" * 64, {"total_s": 0.0})
    out.put((got, time.perf_counter() - t0))


def bench_claims(tmp: Path, claims: int) -> dict[str, float]:
    url = database_url(str(tmp / "claims.db"))
    store = JobStore(open_engine(url))
    store.submit(
        parse_manifest(manifest_bytes(claims), "c.csv", native_size=fixed),
        name="c",
        defaults={},
        max_attempts=3,
    )
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, f"p{i}", claims, out)) for i in range(2)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    ids = results[0][0] + results[1][0]
    busy = max(r[1] for r in results)
    return {
        "claims": len(ids),
        "double_claims": len(ids) - len(set(ids)),
        "per_process": [len(r[0]) for r in results],
        "claims_per_s": len(ids) / busy,
        "wall_s_with_process_start": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--claims", type=int, default=2_000)
    ap.add_argument("--big", type=int, default=1_000_000, help="rows of the huge-submit run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sub = bench_submit(tmp, args.rows)
        print(
            f"submit: {sub['rows']:,} rows validated in {sub['validate_s']:.2f}s + inserted in "
            f"{sub['insert_s']:.2f}s = {sub['total_s']:.2f}s ({sub['rows_per_s']:,.0f} rows/s; target < 5 s); "
            f"resubmit (all duplicates) {sub['resubmit_all_duplicates_s']:.2f}s"
        )
        claims = bench_claims(tmp, args.claims)
        print(
            f"claims: {claims['claims']:,} claim+complete cycles by 2 processes {claims['per_process']}: "
            f"{claims['claims_per_s']:,.0f}/s, double claims: {claims['double_claims']}"
        )
        st = bench_status(tmp, args.jobs)
        print(
            f"status at {st['jobs']:,} jobs (filled in {st['fill_s']:.0f}s): counts {st['status_counts_ms']:.2f} ms "
            f"(max {st['status_counts_max_ms']:.2f}; target < 50 ms), one batch {st['batch_counts_ms']:.2f} ms, "
            f"full `orchestrate status` overview {st['status_overview_ms']:.1f} ms, "
            f"one claim {st['claim_at_1m_ms']:.2f} ms"
        )
        big = bench_big_submit(tmp, args.big)
        print(
            f"huge submit: {big['rows']:,} rows in {big['submit_s']:.1f}s as "
            f"{big['write_transactions']:,} write transactions; longest lock hold "
            f"{big['longest_lock_hold_s']:.3f}s (p99 {big['p99_lock_hold_s']:.3f}s); another "
            f"process's short writes waited at most {big['other_writer_longest_wait_s']:.3f}s"
        )
    save("queue_ops", {"submit": sub, "claims": claims, "status": st, "big_submit": big})


if __name__ == "__main__":
    main()
