"""RQ workers with fake pipelines, started in their own processes by tests."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from PIL import Image

from workers.rq import protocol as proto
from workers.rq.worker import run_worker
from workers.task import PipelineCache, TaskOutput


def fake_output(job: dict[str, Any]) -> TaskOutput:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (job["seed"] % 256, 0, 0)).save(buf, format="PNG")
    return TaskOutput(
        png=buf.getvalue(), result={"total_s": 0.01, "backend": "fake", "device": "cpu"}
    )


def flaky_worker(url: str, fail_times: int) -> None:
    """Fails each job's first ``fail_times`` attempts (counted in Redis), then succeeds."""
    conn = proto.connect(url)

    def runner(job: dict[str, Any], _cache: PipelineCache, _stop: Callable[[], bool]) -> TaskOutput:
        n = conn.incr(f"test:tries:{job['id']}")
        if n <= fail_times:
            raise RuntimeError(f"flaky failure {n}")
        return fake_output(job)

    # idle long enough to sit out the coordinator's backoff between tries (2 s, then 4 s)
    run_worker(url, cache=PipelineCache(), runner=runner, burst=True, burst_idle=10, name="flaky")


def instant_worker(url: str, name: str) -> None:
    def runner(job: dict[str, Any], _cache: PipelineCache, _stop: Callable[[], bool]) -> TaskOutput:
        return fake_output(job)

    run_worker(url, cache=PipelineCache(), runner=runner, burst=True, burst_idle=2, name=name)
