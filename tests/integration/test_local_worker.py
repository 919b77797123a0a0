"""The local worker's orchestration, with a fake pipeline (the real one is tested elsewhere)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import text

from contract.errors import JobInterrupted
from orchestrator.config import WorkerSettings
from orchestrator.events import JobEvent
from orchestrator.store import JobStore
from orchestrator.transports.local import LocalWorker
from tests.conftest import submit_text
from workers.task import PipelineCache, TaskOutput


def fake_png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def fake_result() -> dict[str, Any]:
    return {
        "backend": "fake",
        "device": "cpu",
        "dtype": "fp32",
        "torch_threads": 1,
        "total_s": 0.01,
    }


def ok_runner(job: dict[str, Any], _cache: PipelineCache, _stop: Callable[[], bool]) -> TaskOutput:
    return TaskOutput(png=fake_png(job["seed"]), result=fake_result())


def make_worker(store: JobStore, tmp_path: Path, runner: Any = ok_runner, **kw: Any) -> LocalWorker:
    settings = WorkerSettings(output_dir=tmp_path / "out", burst=True, poll_seconds=0.05, **kw)
    return LocalWorker(store, settings, cache=PipelineCache(), runner=runner)


def test_burst_worker_finishes_every_job_once(store: JobStore, tmp_path: Path) -> None:
    submit_text(store, "prompt,seed,num_images\na,1,5\n")
    events: list[JobEvent] = []
    w = make_worker(store, tmp_path)
    w.on_event = events.append
    stats = w.run()
    assert stats.succeeded == 5
    assert store.count_jobs()["succeeded"] == 5
    files = sorted(p.name for p in (tmp_path / "out" / "1").iterdir())
    assert files == [f"{i:06d}.png" for i in range(1, 6)]
    assert [e.status for e in events] == ["succeeded"] * 5
    job = store.get_job(3)
    assert job["output_path"] == str(tmp_path / "out" / "1" / "000003.png")
    assert job["attempt_rows"][0]["backend"] == "fake"
    assert job["attempt_rows"][0]["queue_wait_s"] >= 0


def test_a_job_that_fails_twice_then_succeeds(store: JobStore, tmp_path: Path) -> None:
    submit_text(store, "prompt\na\n", max_attempts=3)
    calls = []

    def flaky(job: dict[str, Any], cache: PipelineCache, stop: Callable[[], bool]) -> TaskOutput:
        calls.append(job["attempt"])
        if len(calls) < 3:
            raise RuntimeError(f"flaky failure {len(calls)}")
        return ok_runner(job, cache, stop)

    w = make_worker(store, tmp_path, flaky)
    # skip the backoff waits so the test stays fast
    orig_fail = store.fail

    def fail_now(*a: Any, **kw: Any) -> str | None:
        status = orig_fail(*a, **kw)
        with store.engine.connect() as conn:
            conn.execute(text("UPDATE jobs SET not_before = NULL"))
        return status

    store.fail = fail_now  # type: ignore[method-assign]
    assert w.run().succeeded == 1
    job = store.get_job(1)
    assert job["status"] == "succeeded"
    assert [(a["status"], a["error"]) for a in job["attempt_rows"]] == [
        ("failed", "RuntimeError: flaky failure 1"),
        ("failed", "RuntimeError: flaky failure 2"),
        ("succeeded", None),
    ]
    assert calls == [1, 2, 3]


def test_input_errors_are_not_retried(store: JobStore, tmp_path: Path) -> None:
    from contract.errors import JobInputError

    submit_text(store, "prompt\na\n", max_attempts=3)

    def bad(*_a: Any) -> TaskOutput:
        raise JobInputError("quantization '4bit' is not available")

    assert make_worker(store, tmp_path, bad).run().failed == 1
    assert store.get_job(1)["attempts"] == 1


def test_cancel_while_running_stops_the_job_and_drops_it(store: JobStore, tmp_path: Path) -> None:
    submit_text(store, "prompt\na\n")
    started = threading.Event()

    def slow(job: dict[str, Any], _cache: PipelineCache, stop: Callable[[], bool]) -> TaskOutput:
        started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if stop():
                raise JobInterrupted("stopped")
            time.sleep(0.01)
        raise AssertionError("was never told to stop")

    w = make_worker(store, tmp_path, slow, lease_seconds=0.3)
    t = threading.Thread(target=w.run)
    t.start()
    assert started.wait(5)
    store.cancel([1])
    t.join(10)
    assert not t.is_alive()
    job = store.get_job(1)
    assert job["status"] == "cancelled"
    assert [a["status"] for a in job["attempt_rows"]] == [
        "cancelled"
    ]  # closed by the cancel itself
    assert not (tmp_path / "out" / "1" / "000001.png").exists()


def test_stop_request_finishes_current_job_second_releases_it(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, "prompt,num_images\na,3\n")
    w: LocalWorker

    def stopping(job: dict[str, Any], cache: PipelineCache, stop: Callable[[], bool]) -> TaskOutput:
        w.request_stop()  # like a SIGTERM arriving mid-job
        return ok_runner(job, cache, stop)

    w = make_worker(store, tmp_path, stopping)
    assert w.run().succeeded == 1
    assert store.count_jobs()["pending"] == 2

    def twice(job: dict[str, Any], cache: PipelineCache, stop: Callable[[], bool]) -> TaskOutput:
        w.request_stop()
        w.request_stop()  # a second signal: give the job back now
        if stop():
            raise JobInterrupted("stopped")
        raise AssertionError("stop() should be true")

    w = make_worker(store, tmp_path, twice)
    assert w.run().released == 1
    counts = store.count_jobs()
    assert (counts["pending"], counts["running"]) == (2, 0)
    job = store.get_job(2)
    assert job["attempts"] == 0 and job["attempt_rows"][0]["status"] == "released"


def test_max_jobs_stops_the_worker(store: JobStore, tmp_path: Path) -> None:
    submit_text(store, "prompt,num_images\na,4\n")
    assert make_worker(store, tmp_path, max_jobs=3).run().succeeded == 3
    assert store.count_jobs()["pending"] == 1
