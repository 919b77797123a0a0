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
from rq.job import Job
from rq.serializers import JSONSerializer

from contract import protocol as proto
from contract.errors import CoordinatorConflict
from orchestrator.store import JobStore
from orchestrator.transports.coordinator import Coordinator, CoordinatorSettings
from tests.conftest import coordinator, submit_text
from tests.redis_server import RedisServer


def png(color: tuple[int, int, int] = (1, 2, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def payload(redis: Any, rq_id: str) -> dict[str, Any]:
    """The job payload a worker would get for this dispatch."""
    return Job.fetch(rq_id, connection=redis, serializer=JSONSerializer).args[0]  # type: ignore[no-any-return]


def push(redis: Any, kind: str, rq_id: str, *, secret: bytes | None = None, **fields: Any) -> None:
    p = payload(redis, rq_id) if redis.exists(f"rq:job:{rq_id}") else {}
    base = {
        "job_id": p.get("id", int(rq_id.split("-")[1])),
        "token": p.get("token", "0" * 32),
        "worker": "w",
        "host": "h",
        "pid": 1,
    }
    redis.rpush(
        proto.EVENTS_KEY, proto.encode_event(kind, rq_id, secret=secret, **{**base, **fields})
    )


def finish(redis: Any, rq_id: str, data: bytes | None = None, **fields: Any) -> None:
    data = data or png()
    redis.set(proto.image_key(rq_id), data)
    push(
        redis,
        "result",
        rq_id,
        **{
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "result": {"total_s": 0.1, "backend": "fake", "device": "cpu"},
            **fields,
        },
    )


def step(c: Coordinator) -> None:
    c._drain_events(block=False)
    c._dispatch()


def in_flight(c: Coordinator) -> list[str]:
    return sorted(c.in_flight())


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
    dispatched = sorted((cl.job["id"], cl.job["prompt"]) for cl, _ in c.in_flight().values())
    assert dispatched == [(1, "low"), (2, "low"), (6, "high")]
    in_redis = [x.decode() for x in redis.lrange(f"rq:queue:{queue}", 0, -1)]
    assert sorted(in_redis) == in_flight(c)
    assert [int(x.split("-")[1]) for x in in_redis] == [6, 1, 2]  # priority order
    assert store.count_jobs()["queued"] == 3
    # each payload carries its dispatch's token, which only SQLite and the payload know
    p = payload(redis, in_redis[0])
    assert re.fullmatch(r"[0-9a-f]{32}", p["token"]) and p["attempt"] == 1


def test_result_is_recorded_once_and_late_duplicates_are_dropped(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = in_flight(c)
    push(redis, "started", rq_id, worker="w1", host="mac1", pid=9)
    finish(redis, rq_id)
    finish(redis, rq_id)  # the same result twice (e.g. a retried push)
    step(c)
    job = store.get_job(1)
    assert job["status"] == "succeeded"
    assert [(a["status"], a["worker"], a["host"]) for a in job["attempt_rows"]] == [
        ("succeeded", "w1", "mac1")
    ]
    data = Path(job["output_path"]).read_bytes()
    assert data == png()
    assert job["output_sha256"] == hashlib.sha256(data).hexdigest() and job["published_at"]
    assert redis.exists(proto.image_key(rq_id)) == 0
    assert redis.llen(proto.PROCESSING_KEY) == 0
    assert not list((tmp_path / "out" / ".staging").iterdir())


def test_failure_event_retries_with_backoff(store: JobStore, redis: Any, tmp_path: Path) -> None:
    submit_text(store, "prompt\na\n", max_attempts=2)
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = in_flight(c)
    push(redis, "failed", rq_id, error="RuntimeError: boom", retryable=True)
    step(c)
    job = store.get_job(1)
    assert job["status"] == "pending" and job["last_error"] == "RuntimeError: boom"
    assert not c.in_flight()  # backing off: not dispatched again yet


def test_a_job_redis_forgot_is_dispatched_again_without_using_an_attempt(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (first,) = in_flight(c)
    redis.flushdb()  # Redis restarted empty
    c._reconcile(c._redis_view())
    assert in_flight(c) == [first]  # not yet: within lost_after
    time.sleep(0.6)
    c._reconcile(c._redis_view())
    assert not c.in_flight()
    job = store.get_job(1)
    assert job["status"] == "pending" and job["attempts"] == 0
    assert job["attempt_rows"][0]["status"] == "lost"
    c._dispatch()
    (second,) = in_flight(c)
    assert second != first
    assert payload(redis, second)["attempt"] == 2  # numbers only grow
    # the worker that had the first dispatch reports late: ignored
    redis.set(proto.image_key(first), png())
    redis.rpush(
        proto.EVENTS_KEY,
        proto.encode_event(
            "result",
            first,
            job_id=1,
            token="1" * 32,
            worker="w",
            host="h",
            pid=1,
            sha256=hashlib.sha256(png()).hexdigest(),
            size=len(png()),
            result={},
        ),
    )
    step(c)
    assert store.get_job(1)["status"] == "queued"
    assert redis.exists(proto.image_key(first)) == 0


def test_a_started_job_whose_heartbeat_stops_is_lost_and_counted(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n", max_attempts=1)
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = in_flight(c)
    redis.lpop(f"rq:queue:{proto.queue_for('tiny')}")  # a worker took it
    redis.set(proto.heartbeat_key(rq_id), "w1", ex=1)
    push(redis, "started", rq_id, worker="w1", host="mac1", pid=9)
    step(c)
    assert c._redis_view()[0] == {rq_id}  # heartbeating
    time.sleep(1.1)  # the worker was SIGKILLed: its key expires
    c._reconcile(c._redis_view())
    time.sleep(0.6)
    c._reconcile(c._redis_view())
    job = store.get_job(1)
    assert job["status"] == "failed"  # its one attempt is used up
    assert job["last_error"] == "lost: worker stopped heartbeating"
    assert redis.exists(proto.cancel_key(rq_id))


def test_the_log_line_of_a_lost_or_failed_job_says_how_long_it_ran(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    """It said "job 18 lost after 0.00s" of a job that had run 20 s: the coordinator knew no
    time of its own; the attempt's row has its start."""
    from sqlalchemy import text

    from orchestrator.events import JobEvent

    submit_text(store, "prompt\na\nb\n", max_attempts=1)
    c = coordinator(store, redis, tmp_path, window=2)
    events: list[JobEvent] = []
    c.on_event = events.append
    c._dispatch()
    lost, failed = in_flight(c)
    for rq_id in (lost, failed):
        redis.lrem(f"rq:queue:{proto.queue_for('tiny')}", 0, rq_id)  # a worker took it
        push(redis, "started", rq_id, worker="w1", host="mac1", pid=9)
    redis.set(proto.heartbeat_key(lost), "w1", ex=1)
    step(c)
    with store.engine.begin() as conn:  # both started 20 s ago
        conn.execute(text("UPDATE attempts SET started_at = started_at - 20"))
    push(redis, "failed", failed, error="RuntimeError: boom", retryable=False)
    step(c)
    time.sleep(1.1)  # the first one's worker was SIGKILLed: its heartbeat expires
    c._reconcile(c._redis_view())
    time.sleep(0.6)
    c._reconcile(c._redis_view())
    by_status = {e.status: e for e in events}
    assert set(by_status) == {"lost", "failed"}
    assert all(e.seconds >= 20 for e in events), events


def test_a_restarted_coordinator_picks_up_jobs_in_flight(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt,num_images\na,2\n")
    c1 = coordinator(store, redis, tmp_path, window=2)
    c1._dispatch()
    ids = in_flight(c1)
    # a result was taken into processing when the first coordinator died
    finish(redis, ids[0])
    redis.lmove(proto.EVENTS_KEY, proto.PROCESSING_KEY, "LEFT", "RIGHT")
    store.release_coordinator(c1.holder)
    c2 = coordinator(store, redis, tmp_path, window=2)
    assert in_flight(c2) == ids
    c2._drain_events(block=False)
    assert store.count_jobs()["succeeded"] == 1
    assert redis.llen(proto.PROCESSING_KEY) == 0


def test_cancelled_job_is_withdrawn_from_redis(store: JobStore, redis: Any, tmp_path: Path) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = in_flight(c)
    store.cancel([1])
    assert store.get_job(1)["attempt_rows"][0]["status"] == "cancelled"  # closed, not left open
    c._reconcile(c._redis_view())
    assert not c.in_flight()
    assert redis.llen(f"rq:queue:{proto.queue_for('tiny')}") == 0
    assert redis.exists(proto.cancel_key(rq_id))


def test_a_running_cancelled_job_is_told_to_stop(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = in_flight(c)
    redis.lpop(f"rq:queue:{proto.queue_for('tiny')}")  # a worker runs it
    redis.set(proto.heartbeat_key(rq_id), "w1", ex=30)
    store.cancel([1])
    c._withdraw_unwanted()
    assert redis.exists(proto.cancel_key(rq_id))


def test_until_done_returns_nonzero_when_a_job_failed(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n", max_attempts=1)
    c = coordinator(store, redis, tmp_path, window=1, until_done=True)
    c._dispatch()
    (rq_id,) = in_flight(c)
    push(redis, "failed", rq_id, error="JobInputError: no", retryable=False)
    assert c.run() == 1
    assert store.get_job(1)["status"] == "failed"
    assert store.read_coordinator()["state"] == "stopped"  # the lease is handed back


# -- defects of issue 8, each reproduced ---------------------------------------------------------


class FlakyRedis:
    """A Redis client whose calls named in ``fail`` raise ConnectionError once each."""

    def __init__(self, real: Any, fail: set[str]) -> None:
        self.real = real
        self.fail = set(fail)

    def __getattr__(self, name: str) -> Any:
        import redis

        attr = getattr(self.real, name)
        if name not in self.fail:
            return attr

        def failing(*a: Any, **kw: Any) -> Any:
            self.fail.discard(name)
            raise redis.exceptions.ConnectionError(f"injected: {name}")

        return failing


def test_a_redis_error_at_enqueue_strands_nothing(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    import redis as redis_lib

    submit_text(store, "prompt\na\n")
    c = coordinator(store, FlakyRedis(redis, {"pipeline"}), tmp_path, window=1)
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        c._dispatch()
    # committed `queued` in SQLite, never reached Redis: given back at once, no attempt used
    job = store.get_job(1)
    assert job["status"] == "pending" and job["attempts"] == 0
    c.redis = redis
    assert c._dispatch() == 1


def test_a_redis_error_while_fetching_an_image_loses_no_result(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    import redis as redis_lib

    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = in_flight(c)
    finish(redis, rq_id)
    c.redis = FlakyRedis(redis, {"getrange"})
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        c._drain_events(block=False)
    assert store.get_job(1)["status"] == "queued"  # still held by the dispatch...
    assert redis.llen(proto.PROCESSING_KEY) == 1  # ...and its event kept
    c.redis = redis
    c._drain_events(block=False)  # the next tick of the same process finishes it
    assert store.get_job(1)["status"] == "succeeded"


@pytest.mark.parametrize(
    "event",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "started", "rq_id": ["a"]}',
        b'{"type": "started", "rq_id": "orc-1-1-abcdef", "job_id": 1}',  # no worker, no token
        b'{"type": "result", "rq_id": "orc-1-1-abcdef", "job_id": 1, "token": "'
        + b"0" * 32
        + b'", "worker": "w", "host": "h", "pid": 1, "result": [1], "size": 1}',  # no sha256
        b'{"type": "started", "rq_id": "orc-1-1-abcdef", "job_id": 1, "token": "'
        + b"0" * 32
        + b'", "worker": "w", "host": "h", "pid": "one"}',
        b'{"type": "exploded", "rq_id": "orc-1-1-abcdef"}',
    ],
)
def test_malformed_events_are_dead_lettered_and_the_loop_goes_on(
    store: JobStore, redis: Any, tmp_path: Path, event: bytes
) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = in_flight(c)
    redis.rpush(proto.EVENTS_KEY, event)
    finish(redis, rq_id)  # a good event behind the bad one
    step(c)
    assert store.get_job(1)["status"] == "succeeded"
    dead = store.read_dead_letters()
    assert dead["count"] == 1 and dead["recent"][0]["source"] == "event"
    assert redis.lrange(proto.DEAD_KEY, 0, -1) == [event]
    assert redis.llen(proto.PROCESSING_KEY) == 0


def test_a_forged_result_without_the_token_is_refused(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = in_flight(c)
    finish(redis, rq_id, data=png((9, 9, 9)), token="f" * 32)  # knows the rq id, not the token
    step(c)
    assert store.get_job(1)["status"] == "queued"
    assert "wrong token" in store.read_dead_letters()["recent"][0]["reason"]
    assert not (tmp_path / "out" / "1" / "000001.png").exists()


def test_with_a_secret_only_signed_results_count(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    secret = b"s3cret"
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1, secret=secret)
    c._dispatch()
    (rq_id,) = in_flight(c)
    proto.check_payload(payload(redis, rq_id), secret)  # the payload is signed
    finish(redis, rq_id)  # knows the token (it can read Redis), not the secret
    step(c)
    assert store.get_job(1)["status"] == "queued"
    assert "unsigned" in store.read_dead_letters()["recent"][0]["reason"]
    data = png()
    redis.set(proto.image_key(rq_id), data)
    push(
        redis,
        "result",
        rq_id,
        secret=secret,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        result={"total_s": 0.1},
    )
    step(c)
    assert store.get_job(1)["status"] == "succeeded"


def test_an_image_over_the_limit_is_refused_without_reading_it(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1, max_image_bytes=1000)
    c._dispatch()
    (rq_id,) = in_flight(c)
    big = png() + b"\0" * 5000
    finish(redis, rq_id, data=big)
    c.redis = FlakyRedis(redis, {"get", "getrange"})  # reading it would fail the test
    step(c)
    job = store.get_job(1)
    assert job["status"] == "failed" and "over the limit of 1000" in job["last_error"]
    assert redis.exists(proto.image_key(rq_id)) == 0


def test_a_result_whose_bytes_differ_is_dispatched_again(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = in_flight(c)
    finish(redis, rq_id)
    redis.set(proto.image_key(rq_id), png((7, 7, 7)))  # overwritten after the event was sent
    c._drain_events(block=False)
    job = store.get_job(1)
    assert job["status"] == "pending" and "sha256" in job["last_error"]
    assert not list((tmp_path / "out").rglob("*.png"))


def test_a_second_coordinator_refuses_to_start_naming_the_first(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    first = coordinator(store, redis, tmp_path)
    second = Coordinator(store, redis, CoordinatorSettings(output_dir=tmp_path / "out"))
    with pytest.raises(
        CoordinatorConflict, match=r"another coordinator runs on this database: pid \d+ on "
    ):
        second.acquire()
    # a holder that stopped renewing (died) is taken over once its lease has expired
    with store.engine.connect() as conn:
        conn.exec_driver_sql("UPDATE coordinator SET expires_at = 0")
    second.acquire()
    submit_text(store, "prompt\na\n")
    with pytest.raises(CoordinatorConflict, match="lost its lease"):
        first._dispatch()  # the old one is fenced off
    assert store.count_jobs()["queued"] == 0


def test_redis_urls_with_a_password_work_and_bad_ones_are_named(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        conn = proto.connect(server.url)
        assert conn.ping()
        wrong = server.url.replace("s3cret", "nope")
        with pytest.raises(ConnectionError) as info:
            proto.connect_patiently(wrong)  # wrong credentials are not waited for
        assert "refused the credentials" in str(info.value)
        assert "nope" not in str(info.value)  # the password never reaches logs
    finally:
        server.stop()
    with pytest.raises(
        proto.Unreachable, match=re.escape("cannot reach Redis at redis://:***@127.0.0.1")
    ):
        proto.connect(server.url)


def test_a_worker_hash_with_a_bad_pid_is_reported_not_fatal(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    c = coordinator(store, redis, tmp_path)
    redis.hset(
        proto.WORKER_KEY + "evil", mapping={"name": "evil", "pid": "DROP TABLE", "state": "busy"}
    )
    redis.hset(proto.WORKER_KEY + "good", mapping={"name": "good", "pid": "42", "state": "idle"})
    c._sync_workers()
    c._sync_workers()  # reported once per worker, not per sync
    rows = {w["name"]: w for w in store.list_workers()}
    assert rows["evil"]["pid"] is None and rows["evil"]["state"] == "busy"
    assert rows["good"]["pid"] == 42
    dead = store.read_dead_letters()
    assert dead["count"] == 1 and "worker evil: bad fields pid" in dead["recent"][0]["reason"]


def test_a_full_disk_keeps_the_result_for_the_next_tick(
    store: JobStore, redis: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator.results as results_module
    from contract.errors import DiskFull

    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = in_flight(c)
    finish(redis, rq_id)
    real = results_module.stage

    def full(*a: Any, **kw: Any) -> Any:
        raise DiskFull("no room to write (test)")

    monkeypatch.setattr(results_module, "stage", full)
    with pytest.raises(DiskFull):
        c._drain_events(block=False)
    assert redis.llen(proto.PROCESSING_KEY) == 1 and redis.exists(proto.image_key(rq_id))
    assert not list((tmp_path / "out").rglob("*.tmp"))
    monkeypatch.setattr(results_module, "stage", real)
    c._drain_events(block=False)
    assert store.get_job(1)["status"] == "succeeded"


def test_a_refused_dispatch_counts_as_a_failed_attempt_and_ends(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    """A worker that cannot check a payload (an older version, a job past its limits) refuses
    it; the job is failed after its attempts, not re-dispatched for ever."""
    submit_text(store, "prompt\na\n", max_attempts=2)
    c = coordinator(store, redis, tmp_path, window=1)
    for attempt in (1, 2):
        c._dispatch()
        (rq_id,) = in_flight(c)
        redis.rpush(
            proto.EVENTS_KEY,
            proto.encode_event(
                "refused", rq_id, error="payload fields: unknown ['x']", worker="w", host="h", pid=1
            ),
        )
        step(c)
        job = store.get_job(1)
        assert job["attempts"] == attempt
        with store.engine.begin() as conn:  # skip the retry backoff
            conn.exec_driver_sql("UPDATE jobs SET not_before = NULL")
    assert store.get_job(1)["status"] == "failed"
    assert "refused RQ job" in (store.get_job(1)["last_error"] or "")
