"""RQ workers (fake pipelines) with a coordinator, against a real redis-server."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from contract import protocol as proto
from orchestrator.store import JobStore, backoff_seconds
from orchestrator.transports.coordinator import Coordinator, CoordinatorSettings
from tests import fake_workers
from tests.conftest import submit_text
from tests.redis_server import RedisServer
from workers.rq.worker import plain_json


def spawn(target: Any, *args: Any) -> Any:
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args)
    proc.start()
    return proc


@pytest.mark.slow  # waits out two retry backoffs
def test_a_job_that_fails_twice_then_succeeds(
    store: JobStore, redis_server: RedisServer, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n", max_attempts=3)
    worker = spawn(fake_workers.flaky_worker, redis_server.url, 2)
    settings = CoordinatorSettings(output_dir=tmp_path / "out", until_done=True, poll=0.05)
    coord = Coordinator(store, proto.connect(redis_server.url), settings)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(coord.run()))
    thread.start()
    thread.join(300)  # generous: three attempts with backoffs, on a loaded machine
    if thread.is_alive():
        coord.request_stop()
        thread.join()
    worker.join(30)
    assert result == [0]
    job = store.get_job(1)
    assert job["status"] == "succeeded"
    assert [(a["status"], a["worker"], a["error"]) for a in job["attempt_rows"]] == [
        ("failed", "flaky", "RuntimeError: flaky failure 1"),
        ("failed", "flaky", "RuntimeError: flaky failure 2"),
        ("succeeded", "flaky", None),
    ]
    # no retry was dispatched before its backoff was over (the store's rule, read from the
    # recorded times: a slow machine only makes the gaps longer)
    rows = job["attempt_rows"]
    for k in (1, 2):
        not_before = rows[k - 1]["finished_at"] + backoff_seconds(k)
        assert rows[k]["started_at"] >= not_before - 0.01, (k, rows)


def test_a_job_naming_another_function_is_never_executed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    conn = proto.connect(redis_server.url)
    marker = tmp_path / "pwned"
    name = proto.queue_for("tiny")
    conn.sadd(proto.QUEUES_KEY, name)
    q = Queue(name, connection=conn, serializer=JSONSerializer)
    evil = q.enqueue("os.system", f"touch {marker}")
    # and one in pickle, RQ's default serializer
    pickled = Queue(name, connection=conn).enqueue("os.system", f"touch {marker}")
    worker = spawn(fake_workers.instant_worker, redis_server.url, "guard")
    worker.join(60)
    assert not marker.exists()
    job = Job.fetch(evil.id, connection=conn, serializer=JSONSerializer)
    assert job.get_status() == "failed"
    assert "refused: this worker runs only workers.rq.worker.generate" in (
        job.latest_result().exc_string or ""
    )
    assert Job.fetch(pickled.id, connection=conn).get_status() == "failed"
    # each refusal is reported to the coordinator, which counts it with the dead letters
    refused = [proto.decode_event(e) for e in conn.lrange(proto.EVENTS_KEY, 0, -1)]
    assert sorted(e.rq_id for e in refused if e.type == "refused") == sorted([evil.id, pickled.id])


def test_return_values_are_plain_json() -> None:
    import numpy as np

    assert plain_json({"a": np.float32(1.5), "b": [np.int64(2)], "c": "x"}) == {
        "a": 1.5,
        "b": [2],
        "c": "x",
    }
    with pytest.raises(TypeError):
        plain_json({"a": object()})


def test_a_worker_takes_only_compatible_vetted_jobs_into_its_batch(
    store: JobStore, redis_server: RedisServer, tmp_path: Path
) -> None:
    """``take_companions``: compatible jobs leave the queue with their heartbeat started in
    one step; another kind of job, and a foreign one, stay queued for the normal path."""
    from workers.rq.batches import take_companions
    from workers.rq.vetting import vet
    from workers.rq.worker import OrchestrateWorker
    from workers.task import PipelineCache

    submit_text(store, "prompt,seed,steps\na,1,4\nb,2,5\nc,3,4\nd,4,4\ne,5,4\n")
    conn = proto.connect(redis_server.url)
    settings = CoordinatorSettings(output_dir=tmp_path / "out", window=10)
    coord = Coordinator(store, conn, settings)
    coord.acquire()
    assert coord._dispatch() == 5
    name = proto.queue_for("tiny")
    q = Queue(name, connection=conn, serializer=JSONSerializer)
    foreign = q.enqueue("os.system", "true", at_front=False)
    ids = [i.decode() for i in conn.lrange(q.key, 0, -1)]
    first = Job.fetch(ids[0], connection=conn, serializer=JSONSerializer)
    conn.lrem(q.key, 1, first.id)
    payload = vet(first, None)
    worker = OrchestrateWorker(connection=conn, cache=PipelineCache(), name="batcher")

    taken = take_companions(worker, q, payload, limit=2)

    assert [p["id"] for _, p in taken] == [3, 4]  # job 2 has other steps; job 5 is over the limit
    for job, _ in taken:
        assert conn.get(proto.heartbeat_key(job.id)) == b"batcher"
    left = [i.decode() for i in conn.lrange(q.key, 0, -1)]
    assert left == [ids[1], ids[4], foreign.id]
    # With room for more: job 5 only; the other kind of job and the foreign one stay.
    rest = take_companions(worker, q, payload, limit=4)
    assert [p["id"] for _, p in rest] == [5]
    assert [i.decode() for i in conn.lrange(q.key, 0, -1)] == [ids[1], foreign.id]
