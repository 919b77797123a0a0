"""A worker runs the project's task with the project's payload, and nothing else: each way a
Redis client could make it do more, through RQ's own API, against a real redis-server."""

from __future__ import annotations

import http.server
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rq import Callback, Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.webhook import Webhook

from contract import protocol as proto
from tests import fake_workers
from tests.conftest import sample_payload
from tests.redis_server import RedisServer

TOKEN = "ab" * 16


def payload(**extra: Any) -> dict[str, Any]:
    return sample_payload(**extra)


class Hits(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Hits.seen.append(self.path)
        self.send_response(200)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *_a: Any) -> None:
        pass


@pytest.fixture
def attacker() -> Iterator[str]:
    """An HTTP server that records every request: a webhook must never reach it."""
    Hits.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def run_guard(url: str) -> None:
    proc = multiprocessing.get_context("spawn").Process(
        target=fake_workers.instant_worker, args=(url, "guard")
    )
    proc.start()
    proc.join(90)
    assert proc.exitcode == 0


def queue(conn: Any) -> Queue:
    name = proto.queue_for("tiny")
    conn.sadd(proto.QUEUES_KEY, name)
    return Queue(name, connection=conn, serializer=JSONSerializer)


def refused(conn: Any) -> dict[str, str]:
    events = [proto.decode_event(e) for e in conn.lrange(proto.EVENTS_KEY, 0, -1)]
    return {e.rq_id: e.error or "" for e in events if e.type == "refused"}


def test_every_vector_is_refused_before_anything_in_it_runs(
    redis_server: RedisServer, tmp_path: Path, attacker: str
) -> None:
    conn = proto.connect(redis_server.url)
    q = queue(conn)
    marker = tmp_path / "pwned"
    jobs = {
        "on_failure": q.enqueue(
            proto.TASK, payload(), on_failure=Callback("builtins.print"), job_id="orc-1-1-aaaaaa"
        ),
        "on_success": q.enqueue(
            proto.TASK, payload(id=2), on_success=Callback("this.s"), job_id="orc-2-1-aaaaaa"
        ),
        "webhook": q.enqueue(
            "os.system",
            f"touch {marker}",
            webhooks=[Webhook(attacker, "failed"), Webhook(attacker, "finished")],
        ),
        "webhook on our task": q.enqueue(
            proto.TASK,
            payload(id=3),
            webhooks=[Webhook(attacker, "failed")],
            job_id="orc-3-1-aaaaaa",
        ),
        "retry": q.enqueue(proto.TASK, payload(id=4), retry=Retry(max=3), job_id="orc-4-1-aaaaaa"),
        "unknown field": q.enqueue(proto.TASK, payload(id=5, cmd="x"), job_id="orc-5-1-aaaaaa"),
        "two arguments": q.enqueue(proto.TASK, payload(id=6), 7, job_id="orc-6-1-aaaaaa"),
        "keyword": q.enqueue(proto.TASK, payload=payload(id=7), job_id="orc-7-1-aaaaaa"),
        "not an object": q.enqueue(proto.TASK, ["a"], job_id="orc-8-1-aaaaaa"),
    }
    first = q.enqueue(proto.TASK, payload(id=9), job_id="orc-9-1-aaaaaa")
    jobs["depends_on"] = q.enqueue(
        proto.TASK, payload(id=10), depends_on=first, job_id="orc-10-1-aaaaaa"
    )
    run_guard(redis_server.url)
    assert not marker.exists()
    assert Hits.seen == []  # no webhook went out, for a refused job or our own
    reasons = refused(conn)
    for what, job in jobs.items():
        assert job.id in reasons, f"{what} was not refused"
        assert Job.fetch(job.id, connection=conn, serializer=JSONSerializer).get_status() in (
            "failed",
            "deferred",  # RQ never hands a job with an unfinished dependency to a worker
        ), what
    assert "carry no on_failure" in reasons[jobs["on_failure"].id]
    assert "carry no on_success" in reasons[jobs["on_success"].id]
    assert "runs only workers.rq.worker.generate" in reasons[jobs["webhook"].id]
    assert "carry no webhooks" in reasons[jobs["webhook on our task"].id]
    assert "unknown ['cmd']" in reasons[jobs["unknown field"].id]
    assert "exactly one payload" in reasons[jobs["two arguments"].id]


def test_with_a_secret_an_unsigned_payload_is_refused(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = proto.connect(redis_server.url)
    q = queue(conn)
    job = q.enqueue(proto.TASK, payload(), job_id="orc-1-1-bbbbbb")
    monkeypatch.setenv(proto.SECRET_ENV, "s3cret")  # the spawned worker inherits it
    run_guard(redis_server.url)
    assert "unsigned" in refused(conn)[job.id]
