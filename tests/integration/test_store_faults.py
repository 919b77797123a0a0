"""The store under pressure: big submits in short transactions, invisible until complete; lease
renewals that fail fast and fence their worker; a locked database as a state, not a crash."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from contract.errors import DatabaseBusy, JobInterrupted
from orchestrator.config import WorkerSettings
from orchestrator.database import open_engine
from orchestrator.store import JobStore
from orchestrator.transports.local import LocalWorker
from tests.conftest import manifest_of, submit_text, worker
from workers.task import PipelineCache, TaskOutput


def rows(n: int) -> str:
    return "prompt,seed\n" + "".join(f"p{i},{i}\n" for i in range(n))


def test_a_big_submit_is_invisible_until_complete_and_holds_the_lock_briefly(
    store: JobStore, db_url: str
) -> None:
    m = manifest_of(rows(1000))
    seen: list[tuple[int, dict[str, int], Any]] = []
    other = JobStore(open_engine(db_url))

    def on_progress(done: int, total: int) -> None:
        # Between chunks another process can write (a renewal waits one chunk at most)...
        other.upsert_workers(
            [
                {
                    "name": "w",
                    "transport": "local",
                    "host": "h",
                    "state": "idle",
                    "jobs_done": 0,
                    "jobs_failed": 0,
                    "busy_s": 0.0,
                    "started_at": 0.0,
                    "last_seen": time.time(),
                }
            ]
        )
        # ... and sees none of the batch's jobs yet.
        seen.append((done, other.count_jobs(), other.claim(worker(), lease_seconds=30)))

    result = store.submit(
        m, name="big", defaults={}, max_attempts=3, chunk_rows=100, on_progress=on_progress
    )
    assert result.added == 1000
    done = [d for d, _, _ in seen]
    assert len(done) >= 2 and done == sorted(done) and done[-1] == 1000
    assert all(sum(c.values()) == 0 and claim is None for _, c, claim in seen)
    assert store.count_jobs()["pending"] == 1000
    assert [b["state"] for b in store.list_batches()] == ["ready"]


def test_a_submit_that_dies_half_way_leaves_nothing(store: JobStore) -> None:
    m = manifest_of(rows(500))

    def die(done: int, total: int) -> None:
        if done >= 200:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.submit(m, name="x", defaults={}, max_attempts=3, chunk_rows=100, on_progress=die)
    assert sum(store.count_jobs().values()) == 0 and store.list_batches() == []
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar() == 0
    # and a resubmit finds no stale fingerprints in its way
    assert store.submit(m, name="x", defaults={}, max_attempts=3).added == 500


def test_a_killed_loader_is_cleaned_up_or_finished_by_the_next_submit(store: JobStore) -> None:
    with store.engine.connect() as conn:
        # what a SIGKILLed `submit` leaves: a loading batch of a dead pid on this host
        conn.exec_driver_sql(
            "INSERT INTO batches (id, name, rows, job_count, duplicates, defaults_json, "
            "created_at, state, loader, loader_seen_at) VALUES "
            "(7, 'dead', 1, 0, 0, '{}', 0, 'loading', 'nohost:1/x', 0), "
            "(8, 'done', 1, 1, 0, '{}', 0, 'publishing', 'nohost:1/y', 0)"
        )
        for batch, fp in ((7, "a"), (8, "b")):
            conn.exec_driver_sql(
                "INSERT INTO jobs (batch_id, line, image_index, fingerprint, status, priority, "
                "prompt, negative_prompt, seed, steps, guidance_scale, width, height, scheduler, "
                "model, quantization, tags, output_name, attempts, max_attempts, created_at) "
                f"VALUES ({batch}, 2, 0, '{fp}', 'loading', 0, 'p', '', 1, 20, 7.5, 64, 64, "
                "'dpmpp_2m', 'tiny', 'fp16', '', '', 0, 3, 0)"
            )
    assert store.recover_submits() == {"published": [8], "removed": [7]}
    assert [b["id"] for b in store.list_batches()] == [8]
    assert store.count_jobs()["pending"] == 1


def test_a_renewal_waits_briefly_for_the_lock_then_says_busy(store: JobStore, db_url: str) -> None:
    submit_text(store, "prompt\na\n")
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    path = db_url.removeprefix("sqlite:///")
    locker = sqlite3.connect(path, timeout=0, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # a big writer elsewhere
    try:
        with pytest.raises(DatabaseBusy, match="is busy"):
            store.renew(claim, 30, busy_timeout_s=0.2)
        with store.engine.connect() as conn:  # the connection is back to the default wait
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert store.renew(claim, 30)


def test_a_worker_whose_renewals_fail_stops_its_job_by_itself(
    store: JobStore, db_url: str, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    started = threading.Event()
    stopped: list[float] = []

    def long_job(job: dict[str, Any], _c: PipelineCache, stop: Callable[[], bool]) -> TaskOutput:
        started.set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if stop():
                stopped.append(time.monotonic())
                raise JobInterrupted("stopped")
            time.sleep(0.02)
        raise AssertionError("was never told to stop")

    settings = WorkerSettings(
        output_dir=tmp_path / "out", lease_seconds=1.0, max_jobs=1, poll_seconds=0.05
    )
    w = LocalWorker(store, settings, cache=PipelineCache(), runner=long_job)
    thread = threading.Thread(target=w.run)
    thread.start()
    assert started.wait(30)
    path = db_url.removeprefix("sqlite:///")
    locker = sqlite3.connect(path, timeout=0, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # every renewal now fails
    try:
        deadline = time.monotonic() + 60
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stopped, "the worker kept computing blind"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    thread.join(60)
    assert not thread.is_alive()


def test_an_idle_worker_rides_out_a_locked_database(
    store: JobStore, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = store.claim

    def locked_twice(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise DatabaseBusy("the job database x is busy (test)")
        return real(*a, **kw)

    monkeypatch.setattr(store, "claim", locked_twice)
    submit_text(store, "prompt\na\n")
    settings = WorkerSettings(
        output_dir=tmp_path / "out", burst=True, poll_seconds=0.01, pause_seconds=0.01
    )
    runner = lambda job, c, s: TaskOutput(png=b"\x89PNG fake", result={})  # noqa: E731
    stats = LocalWorker(store, settings, cache=PipelineCache(), runner=runner).run()
    assert stats.succeeded == 1 and calls["n"] >= 3


def test_retry_keeps_numbering_attempts(store: JobStore) -> None:
    submit_text(store, "prompt\na\n", max_attempts=1)
    c = store.claim(worker(), lease_seconds=30)
    assert c is not None and store.fail(c, "boom") == "failed"
    assert store.retry([1]) == 1
    c = store.claim(worker(), lease_seconds=30)
    assert c is not None and c.job["attempt"] == 2
    assert store.fail(c, "boom") == "failed"  # a fresh budget of one
    assert [a["number"] for a in store.get_job(1)["attempt_rows"]] == [1, 2]


def test_retry_of_every_failed_job_survives_a_small_variable_limit(db_url: str) -> None:
    """macOS Pythons cap a statement at 32,766 variables (Debian's at 250,000): a statement
    per chunk of ids, never one per failed job. Here the cap is made 999."""
    engine = open_engine(db_url)

    @event.listens_for(engine, "connect")
    def small_limit(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    engine.dispose()
    store = JobStore(engine)
    submit_text(store, "prompt,num_images\na,3000\n")
    with engine.connect() as conn:
        conn.exec_driver_sql("UPDATE jobs SET status = 'failed'")
    assert store.retry(statuses=["failed"], everything=True) == 3000
    assert store.count_jobs()["pending"] == 3000
    assert store.cancel(list(range(1, 3001))) == 3000  # ids: chunked too
