"""The dashboard's and ``orchestrate status``'s queries at a million jobs.

    python benchmarks/status_queries.py [--jobs 1000000] [--repeat 20] [--db PATH]

Fills a database through ``parse_manifest`` + ``store.submit``, then with SQL: 60% of the
jobs succeeded (one attempt each, finished over the last ~17 hours at a fleet's 10 images a
second, so ~6,000 in the 10-minute throughput window, spread over 20 workers), 10% failed
(four error texts), 2% with a lost attempt, 0.1% running. Times each query (median and max
over ``--repeat`` calls), the whole ``overview``, and each dashboard page rendered through
the WSGI app (no network).

Target (issue: status and dashboard): every dashboard query under 100 ms at 1M jobs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import save
from queue_ops import fixed, manifest_bytes, timed

from orchestrator.database import database_url, open_engine
from orchestrator.manifest import parse_manifest
from orchestrator.status import batch_rows, overview
from orchestrator.store import JobStore
from orchestrator.web import DashboardApp

TARGET_MS = 100.0
SECONDS_PER_JOB_ID = 0.06  # 60% succeed: 10 images/s, ~6,000 in a 10-minute window
WORKERS = 20
ERRORS = (
    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "JobInputError: quantization '4bit' is not available",
    "OSError: model 'stabilityai/missing' not found",
    "ValueError: NaN in latents at step 12",
)


def fill(store: JobStore, jobs: int) -> float:
    """Submit ``jobs`` jobs and give them a history; returns the seconds it took."""
    t0 = time.perf_counter()
    chunk = 100_000
    for off in range(0, jobs, chunk):
        m = parse_manifest(
            manifest_bytes(min(chunk, jobs - off), off), "bench.csv", native_size=fixed
        )
        store.submit(m, name=f"part {off // chunk}", defaults={}, max_attempts=3)
    now = time.time()
    params = {"now": now, "n": jobs, "dt": SECONDS_PER_JOB_ID, "w": WORKERS}
    # An attempt for job `id` finished at now - (n - id) * dt: newer jobs finished later.
    finished = ":now - (:n - j.id) * :dt"
    with store.engine.connect() as conn:
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql(
            "INSERT INTO attempts (job_id, batch_id, number, status, worker, host, started_at, "
            "finished_at, backend, device, queue_wait_s, load_s, text_encode_s, denoise_s, "
            "decode_s, encode_s, total_s, peak_mem_mb) "
            f"SELECT j.id, j.batch_id, 1, 'succeeded', 'w' || (j.id % :w), 'host' || (j.id % 5), "
            f"{finished} - 2.0, {finished}, 'diffusers', 'cuda', 1.0, 0, "
            "0.015 + (j.id % 7) * 0.001, j.steps * 0.05 * (1 + (j.id % 13) / 40.0), "
            "0.12 + (j.id % 5) * 0.01, 0.01, "
            "0.2 + j.steps * 0.05 * (1 + (j.id % 13) / 40.0), 4000 "
            "FROM jobs j WHERE j.id % 10 < 6",
            params,
        )
        conn.exec_driver_sql(
            "INSERT INTO attempts (job_id, batch_id, number, status, worker, host, started_at, "
            "finished_at, error) "
            f"SELECT j.id, j.batch_id, 1, 'failed', 'w' || (j.id % :w), 'host' || (j.id % 5), "
            f"{finished} - 1.0, {finished}, "
            "CASE j.id % 4 WHEN 0 THEN :e0 WHEN 1 THEN :e1 WHEN 2 THEN :e2 ELSE :e3 END "
            "FROM jobs j WHERE j.id % 10 = 6",
            {**params, **{f"e{i}": e for i, e in enumerate(ERRORS)}},
        )
        conn.exec_driver_sql(
            "INSERT INTO attempts (job_id, batch_id, number, status, worker, host, started_at, "
            "finished_at, error) "
            f"SELECT j.id, j.batch_id, 1, 'lost', 'w' || (j.id % :w), 'host' || (j.id % 5), "
            f"{finished} - 30, {finished}, "
            "'lease expired: worker w' || (j.id % :w) || '/' || printf('%08x', j.id) "
            "|| ' stopped renewing it' FROM jobs j WHERE j.id % 50 = 8",
            params,
        )
        conn.exec_driver_sql(
            f"UPDATE jobs AS j SET status = 'succeeded', finished_at = {finished}, "
            "output_path = '/out/' || j.batch_id || '/' || j.id || '.png', attempts = 1 "
            "WHERE j.id % 10 < 6",
            params,
        )
        conn.exec_driver_sql(
            f"UPDATE jobs AS j SET status = 'failed', finished_at = {finished}, attempts = 1, "
            "last_error = (SELECT error FROM attempts a WHERE a.job_id = j.id) "
            "WHERE j.id % 10 = 6",
            params,
        )
        conn.exec_driver_sql(
            "INSERT INTO attempts (job_id, batch_id, number, status, worker, host, started_at) "
            "SELECT id, batch_id, 1, 'running', 'w' || (id % :w), 'host', :now - 1 "
            "FROM jobs WHERE id % 1000 = 7",
            params,
        )
        conn.exec_driver_sql(
            "UPDATE jobs SET status = 'running', attempts = 1 WHERE id % 1000 = 7", params
        )
        conn.exec_driver_sql("COMMIT")
        conn.exec_driver_sql("ANALYZE")
    store.upsert_workers(
        {
            "name": f"w{i}",
            "transport": "rq" if i % 2 else "local",
            "host": f"host{i % 5}",
            "pid": 1000 + i,
            "backend": "diffusers",
            "device": "cuda",
            "model": "tiny",
            "state": "busy",
            "current_job": None,
            "jobs_done": jobs * 6 // 10 // WORKERS,
            "jobs_failed": jobs // 10 // WORKERS,
            "busy_s": 1000.0,
            "started_at": now - 60_000,
            "last_seen": now,
        }
        for i in range(WORKERS)
    )
    return time.perf_counter() - t0


def queries(store: JobStore) -> dict[str, Callable[[], Any]]:
    """Every query a dashboard page or ``status`` makes, by name."""
    some_job = store.list_recent_images(limit=1)[0]["id"]
    return {
        "counts": store.count_jobs,
        "counts_batch": lambda: store.count_jobs(5),
        "has_active": store.has_active,
        "batches": store.list_batches,
        "throughput": store.measure_throughput,
        "batch_rows": lambda: batch_rows(store, store.measure_throughput()),
        "stage_timings": store.read_stage_timings,
        "stage_percentiles": store.read_stage_percentiles,
        "stage_percentiles_batch": lambda: store.read_stage_percentiles(5),
        "worker_stats": store.read_worker_stats,
        "failure_groups": store.group_failures,
        "failure_groups_batch": lambda: store.group_failures(5),
        "failed_jobs": store.list_failed_jobs,
        "slowest_jobs": store.list_slowest_jobs,
        "slowest_jobs_batch": lambda: store.list_slowest_jobs(5),
        "recent_images": store.list_recent_images,
        "recent_images_page_40": lambda: store.list_recent_images(limit=25, offset=39 * 24),
        "image_file": lambda: store.find_image_file(some_job),
        "get_job": lambda: store.get_job(some_job),
    }


def page(app: Any, path: str) -> Callable[[], None]:
    """A GET of ``path`` through the dashboard's WSGI app, rendering included (no socket)."""
    import io

    route, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": route,
        "QUERY_STRING": query,
        "HTTP_HOST": "127.0.0.1:8080",
        "wsgi.input": io.BytesIO(),
    }

    def get() -> None:
        status: list[str] = []
        app(environ, lambda s, _h: status.append(s))
        assert status == ["200 OK"], (path, status)

    return get


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument(
        "--db", help="Keep the filled database here, and reuse it when it exists (for tuning)"
    )
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    pages: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        path = Path(args.db) if args.db else Path(d) / "status.db"
        reuse = path.exists()
        store = JobStore(open_engine(database_url(str(path))))
        fill_s = 0.0 if reuse else fill(store, args.jobs)
        data = overview(store)
        print(
            f"{args.jobs:,} jobs filled in {fill_s:.0f}s: {data['counts']}; "
            f"{data['throughput']['images']:,} images in the last 10 min"
        )
        for name, fn in queries(store).items():
            fn()  # warm the page cache, as a dashboard that has been open a while has
            median, worst = timed(fn, args.repeat)
            results[name] = {"median_ms": median, "max_ms": worst}
            flag = "" if median < TARGET_MS else "  OVER TARGET"
            print(f"  {name:<24} {median:8.2f} ms  (max {worst:7.2f}){flag}")
        median, worst = timed(lambda: overview(store), max(3, args.repeat // 4))
        results["overview_total"] = {"median_ms": median, "max_ms": worst}
        print(f"  {'overview (all of status)':<24} {median:8.2f} ms  (max {worst:7.2f})")
        app = DashboardApp(store)
        print("dashboard pages (WSGI, rendered):")
        for path in (
            "/",
            "/batches",
            "/workers",
            "/failures",
            "/gallery",
            "/jobs/1",
            "/api/overview",
        ):
            median, worst = timed(page(app, path), max(3, args.repeat // 4))
            pages[path] = {"median_ms": median, "max_ms": worst}
            print(f"  GET {path:<20} {median:8.2f} ms  (max {worst:7.2f})")
    slowest = max(v["median_ms"] for k, v in results.items() if k != "overview_total")
    print(f"slowest single query: {slowest:.1f} ms (target < {TARGET_MS:.0f} ms)")
    save(
        "status_queries",
        {
            "jobs": args.jobs,
            "fill_s": fill_s,
            "target_ms": TARGET_MS,
            "queries": results,
            "pages": pages,
        },
    )


if __name__ == "__main__":
    main()
