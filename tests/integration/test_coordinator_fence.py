"""A coordinator taken over while it was stopped or slow changes nothing when it wakes, and
stops; completion hooks never hold its lease hostage. Real Redis and SQLite; two coordinators
on one database, driven tick by tick."""

from __future__ import annotations

import hashlib
import shlex
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from contract import protocol as proto
from contract.errors import CoordinatorConflict
from orchestrator.hooks import Hooks
from orchestrator.store import JobStore
from orchestrator.transports.coordinator import Coordinator, CoordinatorSettings
from tests.conftest import coordinator, submit_text
from tests.integration.test_coordinator import finish, in_flight, push

EVENT_LISTS = (proto.EVENTS_KEY, proto.PROCESSING_KEY)


def world(store: JobStore, redis: Any, out: Path) -> dict[str, Any]:
    """Everything a coordinator could change: every job, attempt, worker and dead-letter row,
    who holds the lease, every file under the output folder, every Redis key but the event
    lists (which only change order: see ``events``)."""
    with store.engine.connect() as conn:
        rows = {
            table: conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1").all()
            for table in ("jobs", "attempts", "workers", "dead_letters")
        }
        rows["lease"] = conn.exec_driver_sql("SELECT holder, state FROM coordinator").all()
    files = {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    keys = {k: redis.dump(k) for k in sorted(redis.keys("*")) if k.decode() not in EVENT_LISTS}
    return {"rows": rows, "files": files, "redis": keys}


def events(redis: Any) -> list[bytes]:
    """The events waiting for a coordinator, wherever they wait (new, or taken)."""
    return sorted(x for key in EVENT_LISTS for x in redis.lrange(key, 0, -1))


def settings(tmp_path: Path, **kw: Any) -> CoordinatorSettings:
    return CoordinatorSettings(output_dir=tmp_path / "out", lost_after=0.5, poll=0.05, **kw)


def test_a_coordinator_taken_over_while_slow_changes_nothing_and_stops(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    submit_text(store, "prompt\na\nb\nc\nd\n")
    a = coordinator(store, redis, tmp_path, window=3)
    a._dispatch()
    first, second, third = in_flight(a)
    push(redis, "started", first, worker="w1", host="mac1", pid=9)
    a._drain_events(block=False)
    redis.set(proto.heartbeat_key(first), "1")  # w1 is on it
    # A stops (SIGSTOP, a long pause) past its lease; B takes over. A does not know yet.
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE coordinator SET expires_at = 0")
    b = Coordinator(store, redis, settings(tmp_path, window=3))
    b.acquire()
    before = world(store, redis, out)
    assert before["rows"]["lease"] == [(b.holder, "running")]

    # A wakes mid-tick. It had seen every dispatch go missing: its reconcile would lose them.
    a._missing_since = {rq_id: time.monotonic() - 60 for rq_id in (first, second, third)}
    with pytest.raises(CoordinatorConflict, match="lost its lease"):
        a._reconcile((set(), set()), {first, second, third})
    # ... and withdraw from Redis a dispatch it no longer counts as held (B's, for all it knows)
    with pytest.raises(CoordinatorConflict):
        a._reconcile((set(), {"orc-4-1-abcdef"}), {first, second, third})
    with pytest.raises(CoordinatorConflict):
        a._withdraw_unwanted(set())
    with pytest.raises(CoordinatorConflict):
        a._dispatch(0)  # job 4 is pending
    assert world(store, redis, out) == before

    # The workers report: a result, a failure, a release. A handles none of them.
    finish(redis, first)
    push(redis, "failed", second, error="boom", retryable=True)
    push(redis, "released", third)
    waiting = events(redis)
    before = world(store, redis, out)
    for raw in waiting:
        with pytest.raises(CoordinatorConflict):
            a._handle_raw(raw)
    with pytest.raises(CoordinatorConflict):
        a._drain_events(block=False)
    assert world(store, redis, out) == before
    assert events(redis) == waiting  # every one is left for B

    # A paused batch's dispatches are not A's to take back either.
    store.pause(1)
    before = world(store, redis, out)
    with pytest.raises(CoordinatorConflict):
        a._take_back_paused()
    assert world(store, redis, out) == before
    store.resume(1)

    # Its next tick finds the lease gone, and run() stops without finishing up for B.
    before = world(store, redis, out)
    with pytest.raises(CoordinatorConflict, match="lost its lease"):
        a.tick()
    with pytest.raises(CoordinatorConflict, match="lost its lease"):
        a.run()
    assert world(store, redis, out) == before
    assert events(redis) == waiting

    # B, undisturbed, handles what A left.
    b._drain_events(block=False)
    jobs = {j: store.get_job(j) for j in (1, 2, 3)}
    assert jobs[1]["status"] == "succeeded" and Path(jobs[1]["output_path"]).is_file()
    assert [a["status"] for a in jobs[1]["attempt_rows"]] == ["succeeded"]
    assert jobs[2]["status"] == "pending" and jobs[2]["last_error"] == "boom"
    assert jobs[3]["status"] == "pending"
    assert store.read_coordinator()["holder"] == b.holder  # type: ignore[index]


def test_a_lease_that_expired_unclaimed_is_renewed_and_work_goes_on(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    """Slow, but nobody took over: the coordinator's writes still count (a takeover would
    have rewritten the lease row under the same write lock), and its next renewal holds."""
    submit_text(store, "prompt\na\n")
    a = coordinator(store, redis, tmp_path, window=1)
    a._dispatch()
    (rq_id,) = in_flight(a)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE coordinator SET expires_at = 0")
    finish(redis, rq_id)
    a._drain_events(block=False)
    assert store.get_job(1)["status"] == "succeeded"
    a.tick()
    assert store.read_coordinator()["expires_at"] > time.time()  # type: ignore[index]


def test_a_slow_completion_hook_does_not_stop_the_lease_being_renewed(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    started, release, done = (tmp_path / n for n in ("started", "release", "done"))
    hook = (
        f"touch {shlex.quote(str(started))}; "
        f"while [ ! -e {shlex.quote(str(release))} ]; do sleep 0.05; done; "
        f'echo "$ORCHESTRATE_BATCH_ID" >> {shlex.quote(str(done))}'
    )
    submit_text(store, "prompt\na\n")
    c = Coordinator(
        store,
        redis,
        settings(tmp_path, window=1, lease_ttl=6, workers_every=0.1),
        hooks=Hooks(on_done=hook),
    )
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(c.run()))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not c.held() and time.monotonic() < deadline:
            time.sleep(0.05)
        (rq_id,) = c.held()
        finish(redis, rq_id)
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the batch's hook never started"
        # The hook is still running (it waits for `release`); the lease must be renewed.
        hook_began = time.time()
        deadline = time.monotonic() + 20
        while store.read_coordinator()["renewed_at"] <= hook_began:  # type: ignore[index]
            assert time.monotonic() < deadline, "the lease was not renewed while a hook ran"
            time.sleep(0.05)
        assert not done.exists()
    finally:
        release.touch()
        c.request_stop()
        thread.join(120)
    assert result == [0]
    assert done.read_text().split() == ["1"]  # run once, and finished before the exit
    assert store.read_coordinator()["state"] == "stopped"  # type: ignore[index]
