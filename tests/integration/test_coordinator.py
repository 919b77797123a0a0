"""The coordinator against a real Redis and SQLite, with worker events pushed by hand."""

from __future__ import annotations

import hashlib
import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from orchestrator.dispatch import Coordinator, CoordinatorSettings
from orchestrator.store import JobStore
from tests.conftest import submit_text
from tests.redis_server import RedisServer
from workers import rq_protocol as proto


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def redis(redis_server: RedisServer) -> Any:
    return proto.connect(redis_server.url)


def coordinator(store: JobStore, redis: Any, tmp_path: Path, **kw: Any) -> Coordinator:
    settings = CoordinatorSettings(output_dir=tmp_path / "out", lost_after=0.5, poll=0.05, **kw)
    return Coordinator(store, redis, settings)


def push(redis: Any, kind: str, rq_id: str, job_id: int, **fields: Any) -> None:
    redis.rpush(proto.EVENTS_KEY, proto.encode_event(kind, rq_id, job_id=job_id, **fields))


def finish(redis: Any, rq_id: str, job_id: int, data: bytes | None = None) -> None:
    data = data or png()
    redis.set(proto.image_key(rq_id), data)
    push(
        redis,
        "result",
        rq_id,
        job_id,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        result={"total_s": 0.1, "backend": "fake", "device": "cpu"},
        worker="w",
        host="h",
        pid=1,
    )


def step(c: Coordinator) -> None:
    c._handle_events(c._take_events(block=False))
    c._dispatch()


def test_dispatch_keeps_a_bounded_window_in_priority_order(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt,priority,num_images\nlow,0,5\nhigh,5,1\n")
    c = coordinator(store, redis, tmp_path, window=3)
    assert c._dispatch() == 3
    assert c._dispatch() == 0  # the window is full
    queue = proto.queue_for("tiny")
    assert redis.llen(f"rq:queue:{queue}") == 3
    assert redis.smembers(proto.QUEUES_KEY) == {queue.encode()}
    dispatched = [(cl.job["id"], cl.job["prompt"]) for cl in c.in_flight.values()]
    assert dispatched == [(6, "high"), (1, "low"), (2, "low")]
    in_redis = [x.decode() for x in redis.lrange(f"rq:queue:{queue}", 0, -1)]
    assert in_redis == list(c.in_flight)
    assert store.counts()["queued"] == 3


def test_result_is_recorded_once_and_late_duplicates_are_dropped(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = c.in_flight
    push(redis, "started", rq_id, 1, worker="w1", host="mac1", pid=9, at=time.time())
    finish(redis, rq_id, 1)
    finish(redis, rq_id, 1)  # the same result twice (e.g. a retried push)
    step(c)
    job = store.get_job(1)
    assert job["status"] == "succeeded"
    assert [(a["status"], a["worker"], a["host"]) for a in job["attempt_rows"]] == [
        ("succeeded", "w1", "mac1")
    ]
    assert Path(job["output_path"]).read_bytes() == png()
    assert redis.exists(proto.image_key(rq_id)) == 0
    assert redis.llen(proto.PROCESSING_KEY) == 0


def test_failure_event_retries_with_backoff(store: JobStore, redis: Any, tmp_path: Path) -> None:
    submit_text(store, "prompt\na\n", max_attempts=2)
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = c.in_flight
    push(redis, "failed", rq_id, 1, error="RuntimeError: boom", retryable=True)
    step(c)
    job = store.get_job(1)
    assert job["status"] == "pending" and job["last_error"] == "RuntimeError: boom"
    assert not c.in_flight  # backing off: not dispatched again yet


def test_a_job_redis_forgot_is_dispatched_again_without_using_an_attempt(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (first,) = c.in_flight
    redis.flushdb()  # Redis restarted empty
    c._resolve(c._unaccounted())
    assert first in c.in_flight  # not yet: within lost_after
    time.sleep(0.6)
    c._resolve(c._unaccounted())
    assert not c.in_flight
    job = store.get_job(1)
    assert job["status"] == "pending" and job["attempts"] == 0
    assert job["attempt_rows"][0]["status"] == "lost"
    c._dispatch()
    (second,) = c.in_flight
    assert second != first
    # the worker that had the first dispatch reports late: ignored
    finish(redis, first, 1)
    step(c)
    assert store.get_job(1)["status"] == "queued"


def test_a_started_job_whose_heartbeat_stops_is_lost_and_counted(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n", max_attempts=1)
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = c.in_flight
    redis.delete(f"rq:queue:{proto.queue_for('tiny')}")  # a worker took it
    redis.set(proto.heartbeat_key(rq_id), "w1", ex=1)
    push(redis, "started", rq_id, 1, worker="w1", host="mac1", pid=9, at=time.time())
    step(c)
    assert c._unaccounted() == set()  # heartbeating
    time.sleep(1.1)  # the worker was SIGKILLed: its key expires
    c._resolve(c._unaccounted())
    time.sleep(0.6)
    c._resolve(c._unaccounted())
    job = store.get_job(1)
    assert job["status"] == "failed"  # its one attempt is used up
    assert job["last_error"] == "lost: worker stopped heartbeating"
    assert redis.exists(proto.cancel_key(rq_id))


def test_a_restarted_coordinator_picks_up_jobs_in_flight(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt,num_images\na,2\n")
    c1 = coordinator(store, redis, tmp_path, window=2)
    c1._dispatch()
    ids = sorted(c1.in_flight)
    # a result was taken into processing when the first coordinator died
    finish(redis, ids[0], int(ids[0].split("-")[1]))
    redis.lmove(proto.EVENTS_KEY, proto.PROCESSING_KEY, "LEFT", "RIGHT")
    c2 = coordinator(store, redis, tmp_path, window=2)
    assert sorted(c2.in_flight) == ids
    c2._handle_events(c2._recover_processing())
    assert store.counts()["succeeded"] == 1
    assert redis.llen(proto.PROCESSING_KEY) == 0


def test_cancelled_job_is_withdrawn_from_redis(store: JobStore, redis: Any, tmp_path: Path) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = c.in_flight
    store.cancel([1])
    c._resolve(c._unaccounted())
    assert not c.in_flight
    assert redis.llen(f"rq:queue:{proto.queue_for('tiny')}") == 0
    assert redis.exists(proto.cancel_key(rq_id))


def test_until_done_returns_nonzero_when_a_job_failed(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n", max_attempts=1)
    c = coordinator(store, redis, tmp_path, window=1, until_done=True)
    c._dispatch()
    (rq_id,) = c.in_flight
    push(redis, "failed", rq_id, 1, error="JobInputError: no", retryable=False)
    assert c.run() == 1
    assert store.get_job(1)["status"] == "failed"


def test_redis_urls_with_a_password_work_and_bad_ones_are_named(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        conn = proto.connect(server.url)
        assert conn.ping()
        wrong = server.url.replace("s3cret", "nope")
        with pytest.raises(ConnectionError) as info:
            proto.connect(wrong)
        assert "refused the credentials" in str(info.value)
        assert "nope" not in str(info.value)  # the password never reaches logs
    finally:
        server.stop()
    with pytest.raises(
        ConnectionError, match=re.escape("cannot reach Redis at redis://:***@127.0.0.1")
    ):
        proto.connect(server.url)
