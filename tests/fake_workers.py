"""RQ workers with fake pipelines, started in their own processes by tests."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from PIL import Image

from contract import protocol as proto
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


def noise_png(side: int, seed: int) -> bytes:
    """An incompressible PNG of about 3 x side^2 bytes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def big_image_local_worker(db_url: str, out_dir: str, fsize_limit: int) -> None:
    """A local worker whose images (about 3 MB) are bigger than this process may write:
    RLIMIT_FSIZE stands in for a full disk until the test raises the limit."""
    import resource
    from pathlib import Path

    from orchestrator.config import WorkerSettings
    from orchestrator.database import open_engine
    from orchestrator.store import JobStore
    from orchestrator.transports.local import LocalWorker

    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, hard))
    store = JobStore(open_engine(db_url))
    settings = WorkerSettings(
        output_dir=Path(out_dir), burst=True, poll_seconds=0.05, pause_seconds=0.2
    )

    def runner(job: dict[str, Any], _c: PipelineCache, _s: Callable[[], bool]) -> TaskOutput:
        return TaskOutput(png=noise_png(1000, job["seed"]), result={"total_s": 0.01})

    LocalWorker(store, settings, cache=PipelineCache(), runner=runner).run()


class GatedCache(PipelineCache):
    """A pipeline cache whose model 'loads' until the Redis key ``test:loaded`` exists."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.conn = proto.connect(url)

    def _load(self, model: str, quantization: str) -> tuple[Any, float]:
        import time
        from types import SimpleNamespace

        while not self.conn.exists("test:loaded"):
            time.sleep(0.05)
        self.current = SimpleNamespace(
            model=model, quantization=quantization, name="fake", device="cpu"
        )
        return self.current, 0.0


def gated_worker(url: str, name: str, heartbeat: float) -> None:
    """Each job loads its model (until ``test:loaded`` exists), then runs until the key
    ``test:go:<job id>`` exists: a test looks at the worker in each state."""
    import time

    cache = GatedCache(url)

    def runner(job: dict[str, Any], c: PipelineCache, _stop: Callable[[], bool]) -> TaskOutput:
        c.get(job["model"])
        while not cache.conn.exists(f"test:go:{job['id']}"):
            time.sleep(0.05)
        return fake_output(job)

    run_worker(url, cache=cache, runner=runner, name=name, heartbeat_interval=heartbeat)
