"""Overhead of the Redis/RQ path: coordinator + worker round trip per job, the coordinator's
sustained dispatch+collect rate, and how many 20 s/image workers one coordinator keeps busy.

    python benchmarks/overhead_rq.py [--jobs 600] [--workers 3]

Workers run a fake pipeline that returns at once with a PNG the size of the tiny model's
(64x64, noise: about 12 KB), so everything measured is orchestration: SQLite dispatch, RQ
enqueue, the worker's dequeue/heartbeat/events, image bytes through Redis, the coordinator's
collect, the atomic file write and the SQLite record. A real redis-server is started on a
free port. Targets (issue 3): per-job overhead under 30 ms; at least 200 workers per
coordinator at 20 s per image.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import ROOT, save

sys.path.insert(0, str(ROOT))

from contract import protocol as proto
from orchestrator.database import database_url, open_engine
from orchestrator.manifest import parse_manifest
from orchestrator.store import JobStore
from orchestrator.transports.coordinator import Coordinator, CoordinatorSettings
from tests.redis_server import RedisServer

SECONDS_PER_IMAGE = 20.0


def noise_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def fake_worker(url: str, name: str, idle: int) -> None:
    from workers.rq.worker import run_worker
    from workers.task import PipelineCache, TaskOutput

    png = noise_png()

    def runner(job: dict[str, Any], _cache: Any, _stop: Any) -> TaskOutput:
        return TaskOutput(png=png, result={"total_s": 0.0, "backend": "fake", "device": "cpu"})

    run_worker(
        url,
        cache=PipelineCache(),
        runner=runner,
        burst=True,
        burst_idle=idle,
        name=name,
        logging_level="WARNING",
    )


def run_batch(tmp: Path, url: str, jobs: int, workers: int, tag: str) -> dict[str, float]:
    store = JobStore(open_engine(database_url(str(tmp / f"{tag}.db"))))
    rows = "prompt,seed\n" + "".join(f"p{i},{i}\n" for i in range(jobs))
    store.submit(
        parse_manifest(rows, "b.csv", native_size=lambda m: (64, 64)),
        name=tag,
        defaults={},
        max_attempts=3,
    )
    conn = proto.connect(url)
    conn.flushdb()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=fake_worker, args=(url, f"{tag}{i}", 3)) for i in range(workers)]
    for p in procs:
        p.start()
    # wait until every worker has registered, so start-up is not timed
    deadline = time.monotonic() + 60
    while len(list(conn.scan_iter(match=proto.WORKER_KEY + "*"))) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not start")
        time.sleep(0.05)
    settings = CoordinatorSettings(output_dir=tmp / f"out-{tag}", until_done=True, poll=0.05)
    coord = Coordinator(store, conn, settings)
    cpu: list[float] = []

    def run() -> None:
        t = resource.getrusage(resource.RUSAGE_THREAD)
        coord.run()
        u = resource.getrusage(resource.RUSAGE_THREAD)
        cpu.append((u.ru_utime + u.ru_stime) - (t.ru_utime + t.ru_stime))

    t0 = time.perf_counter()
    th = threading.Thread(target=run)
    th.start()
    th.join()
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(30)
    counts = store.count_jobs()
    assert counts["succeeded"] == jobs, counts
    with store.engine.connect() as c:
        per_job = [
            r[0]
            for r in c.exec_driver_sql(
                "SELECT j.finished_at - a.started_at FROM jobs j JOIN attempts a "
                "ON a.job_id = j.id AND a.status = 'succeeded'"
            )
        ]
    return {
        "jobs": jobs,
        "workers": workers,
        "wall_s": wall,
        "jobs_per_s": jobs / wall,
        "ms_per_job": 1000 * wall / jobs,
        "coordinator_cpu_ms_per_job": 1000 * cpu[0] / jobs,
        "start_to_recorded_ms_median": 1000 * statistics.median(per_job),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=600)
    ap.add_argument("--workers", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = RedisServer(tmp)
        server.start()
        try:
            one = run_batch(tmp, server.url, args.jobs // 2, 1, "one")
            many = run_batch(tmp, server.url, args.jobs, args.workers, "many")
        finally:
            server.stop()
    # One coordinator's capacity: its own CPU per job, on a core of its own.
    capacity = 1000 / many["coordinator_cpu_ms_per_job"]
    print(
        f"per-job overhead, one worker, instant pipeline: {one['ms_per_job']:.1f} ms "
        f"(target < 30 ms); worker start -> recorded median {one['start_to_recorded_ms_median']:.1f} ms"
    )
    print(
        f"{args.workers} workers on this 2-core machine: {many['jobs_per_s']:.0f} jobs/s sustained "
        f"(workers and coordinator share the cores)"
    )
    print(
        f"coordinator CPU per job: {many['coordinator_cpu_ms_per_job']:.2f} ms -> "
        f"{capacity:.0f} jobs/s on a core of its own"
    )
    measured_workers = many["jobs_per_s"] * SECONDS_PER_IMAGE
    capacity_workers = capacity * SECONDS_PER_IMAGE
    print(
        f"workers kept busy at {SECONDS_PER_IMAGE:.0f} s/image: {measured_workers:.0f} "
        f"(from the measured rate), {capacity_workers:.0f} (from coordinator CPU); target >= 200"
    )
    save(
        "overhead_rq",
        {
            "one_worker": one,
            "many_workers": many,
            "coordinator_capacity_jobs_per_s": capacity,
            "workers_at_20s_measured": measured_workers,
            "workers_at_20s_capacity": capacity_workers,
        },
    )


if __name__ == "__main__":
    main()
