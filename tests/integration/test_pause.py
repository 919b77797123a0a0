"""Pause, resume and priority changes: in the store (local claims), in the coordinator's
dispatch (against a real Redis), and in the dashboard's JSON API."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from contract import protocol as proto
from contract.errors import JobNotFound, UsageError
from orchestrator.store import JobStore
from tests.conftest import coordinator, submit_text, worker


def claim_all(store: JobStore) -> list[str]:
    out = []
    while (c := store.claim(worker(), lease_seconds=30)) is not None:
        out.append(c.job["prompt"])
    return out


# -- the store: local claims ---------------------------------------------------------------------


def test_a_paused_batch_is_skipped_and_resume_makes_it_claimable(store: JobStore) -> None:
    submit_text(store, "prompt,priority\na1,5\na2,5\n")  # batch 1, higher priority
    submit_text(store, "prompt\nb1\n")  # batch 2
    assert store.pause(1) is True
    assert store.pause(1) is False  # already paused
    assert claim_all(store) == ["b1"]
    paused = store.read_pauses()
    assert paused["queue_paused_at"] is None and paused["waiting"] == 2
    assert [(b["id"], b["pending"]) for b in paused["batches"]] == [(1, 2)]
    assert store.has_workable()  # b1 runs
    store.cancel([3])
    assert store.has_active() and not store.has_workable()  # only paused jobs are left
    assert store.resume(1) is True
    assert store.resume(1) is False
    assert store.has_workable()
    assert claim_all(store) == ["a1", "a2"]


def test_a_stale_pick_is_rechecked_under_the_write_lock(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While something is paused the pick is read outside the write lock; the take checks it
    again. A pick that went stale (taken by another worker, or its batch paused since) is
    never taken: after a few tries the one-statement claim decides."""
    from sqlalchemy import text

    submit_text(store, "prompt,priority\na1,5\na2,5\n")  # batch 1
    submit_text(store, "prompt\nb1\nb2\n")  # batch 2
    store.pause(1)
    taken = store.claim(worker(), lease_seconds=30)
    assert taken is not None and taken.job["prompt"] == "b1"
    for stale in (taken.job["id"], 1):  # running now; in the paused batch
        monkeypatch.setattr(JobStore, "_PICK_SQL", text(f"SELECT {stale}"))
        claim = store.claim(worker(), lease_seconds=30)
        assert claim is not None and claim.job["prompt"] == "b2"
        with store.engine.begin() as conn:  # give b2 back for the next round
            conn.exec_driver_sql("UPDATE jobs SET status = 'pending' WHERE id = 4")
    assert store.get_job(1)["status"] == "pending" and store.get_job(3)["attempts"] == 1


def test_pausing_the_queue_stops_every_claim_and_keeps_batch_pauses(store: JobStore) -> None:
    submit_text(store, "prompt\na\n")
    submit_text(store, "prompt\nb\n")
    store.pause(2)
    assert store.pause() is True and store.pause() is False
    assert store.claim(worker(), lease_seconds=30) is None
    assert store.read_pauses()["waiting"] == 2
    assert store.resume() is True
    assert claim_all(store) == ["a"]  # batch 2 stays paused on its own
    store.resume(2)
    assert claim_all(store) == ["b"]


def test_a_running_job_of_a_paused_batch_finishes(store: JobStore) -> None:
    submit_text(store, "prompt\na\nb\n")
    running = store.claim(worker(), lease_seconds=30)
    assert running is not None
    store.pause(1)
    assert store.renew(running, 30)  # its lease holds
    assert store.complete(running, "/out/1.png", "0" * 64, {"total_s": 1.0})
    assert store.claim(worker(), lease_seconds=30) is None  # but b does not start
    assert store.get_job(2)["status"] == "pending"


def test_priority_change_reorders_claims_and_touches_only_pending_jobs(store: JobStore) -> None:
    submit_text(store, "prompt\na\nb\nc\nd\n")
    running = store.claim(worker(), lease_seconds=30)
    assert running is not None and running.job["prompt"] == "a"
    assert store.set_priority(9, [3]) == 1
    assert store.set_priority(9, [3]) == 0  # already at 9
    assert store.set_priority(7, [1]) == 0  # running: keeps its priority
    assert store.get_job(1)["priority"] == 0
    assert store.set_priority(5, batch_id=1) == 3  # b, c and d; not the running a
    assert store.set_priority(5, batch_id=1) == 0
    assert [store.get_job(i)["priority"] for i in (1, 2, 3, 4)] == [0, 5, 5, 5]
    assert store.set_priority(9, [3]) == 1
    assert store.set_priority(-3, [4]) == 1
    assert claim_all(store) == ["c", "b", "d"]


def test_priority_mistakes_are_usage_errors(store: JobStore) -> None:
    submit_text(store, "prompt\na\n")
    with pytest.raises(JobNotFound, match="no job with id 99"):
        store.set_priority(1, [1, 99])
    with pytest.raises(UsageError, match="no batch 7"):
        store.set_priority(1, batch_id=7)
    with pytest.raises(UsageError, match="between"):
        store.set_priority(10**7, [1])
    with pytest.raises(UsageError, match="no batch 7"):
        store.pause(7)
    with pytest.raises(UsageError, match="no batch 7"):
        store.resume(7)


# -- the coordinator ------------------------------------------------------------------------------


def queued_ids(redis: Any) -> list[int]:
    return [
        int(x.decode().split("-")[1])
        for x in redis.lrange(f"rq:queue:{proto.queue_for('tiny')}", 0, -1)
    ]


def test_the_coordinator_dispatches_nothing_of_a_paused_batch(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt,priority\na1,5\na2,5\n")
    submit_text(store, "prompt\nb1\nb2\nb3\n")
    store.pause(1)
    c = coordinator(store, redis, tmp_path, window=10)
    assert c._dispatch() == 3
    assert sorted(queued_ids(redis)) == [3, 4, 5]
    assert store.get_job(1)["status"] == "pending"
    store.pause()
    submit_text(store, "prompt\nc1\n")
    assert c._dispatch() == 0  # the queue is paused: nothing at all
    store.resume()
    store.resume(1)
    assert c._dispatch() == 3
    assert sorted(queued_ids(redis)) == [1, 2, 3, 4, 5, 6]


def test_paused_dispatches_not_yet_taken_go_back_and_taken_ones_run(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\nb\n")
    c = coordinator(store, redis, tmp_path, window=2)
    assert c._dispatch() == 2
    queue = f"rq:queue:{proto.queue_for('tiny')}"
    taken = redis.lpop(queue).decode()  # a worker took job 1's dispatch
    (waiting,) = [x.decode() for x in redis.lrange(queue, 0, -1)]
    store.pause(1)
    assert c._take_back_paused() == {waiting}
    assert redis.llen(queue) == 0 and not redis.exists(f"rq:job:{waiting}")
    job2 = store.get_job(2)
    assert job2["status"] == "pending" and job2["attempts"] == 0  # no attempt used up
    assert job2["attempt_rows"][-1]["status"] == "released"
    assert set(c.in_flight()) == {taken}  # the taken one stays and may finish
    assert c._take_back_paused() == set()
    assert c._dispatch() == 0  # paused: job 2 is not sent again
    store.resume(1)
    assert c._dispatch() == 1
    assert store.get_job(2)["status"] == "queued"


def test_until_done_stops_when_only_paused_jobs_are_left(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    store.pause(1)
    c = coordinator(store, redis, tmp_path, window=1, until_done=True)
    assert c.run() == 1  # returns (no endless wait), and says the work is not done
    assert store.get_job(1)["status"] == "pending"
    assert store.read_coordinator()["state"] == "stopped"


# -- the dashboard's JSON API ---------------------------------------------------------------------


def call(app: Any, method: str, path: str, body: Any = None, **headers: str) -> tuple[str, Any]:
    raw = b"" if body is None else json.dumps(body).encode()
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "HTTP_HOST": "127.0.0.1:8080",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": io.BytesIO(raw),
        **{f"HTTP_{k.upper()}": v for k, v in headers.items()},
    }
    got: dict[str, str] = {}
    out = b"".join(app(environ, lambda status, _h: got.setdefault("status", status)))
    return got["status"], json.loads(out) if out else None


def test_the_api_pauses_resumes_and_reprioritises_with_the_token(store: JobStore) -> None:
    from orchestrator.web.app import DashboardApp

    submit_text(store, "prompt\na\nb\n")
    app = DashboardApp(store)
    status, data = call(app, "POST", "/api/batches/1/pause")
    assert status.startswith("403")  # no token: refused
    status, data = call(app, "GET", "/api/token")
    token = data["token"]
    status, data = call(app, "POST", "/api/batches/1/pause", X_ORCHESTRATE_TOKEN=token)
    assert status.startswith("200") and data["changed"] is True
    assert [b["id"] for b in data["batches"]] == [1]
    assert store.claim(worker(), lease_seconds=30) is None
    status, data = call(app, "POST", "/api/pause", {"token": token})
    assert data["queue_paused_at"] is not None
    status, data = call(app, "POST", "/api/resume", {"token": token})
    status, data = call(app, "POST", "/api/batches/1/resume", {"token": token})
    assert data == {**data, "changed": True, "batches": [], "waiting": 0}
    status, data = call(app, "POST", "/api/jobs/2/priority", {"token": token, "priority": 4})
    assert status.startswith("200") and data == {"changed": 1, "priority": 4}
    status, data = call(app, "POST", "/api/batches/1/priority", {"token": token, "priority": -1})
    assert data == {"changed": 2, "priority": -1}
    status, data = call(app, "POST", "/api/jobs/2/priority", {"token": token, "priority": "x"})
    assert status.startswith("400") and "whole number" in data["error"]
    status, data = call(app, "POST", "/api/batches/9/pause", {"token": token})
    assert status.startswith("404") and data["error"] == "no batch 9"
    status, data = call(app, "GET", "/api/paused")
    assert status.startswith("200") and data["queue_paused_at"] is None


def test_the_dashboard_sets_a_batchs_and_a_jobs_priority(store: JobStore) -> None:
    from orchestrator.web.app import DashboardApp

    submit_text(store, "prompt\na\nb\n")
    app = DashboardApp(store)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/batches/1", "QUERY_STRING": ""}
    environ |= {"HTTP_HOST": "127.0.0.1:8080", "wsgi.input": io.BytesIO(b"")}
    page = b"".join(app(environ, lambda *_: None)).decode()
    assert 'id="batch-priority"' in page and "priority of its 2 pending jobs" in page
    token = call(app, "GET", "/api/token")[1]["token"]
    form = {"token": token, "priority": 7, "next": "/batches/1"}
    assert call(app, "POST", "/batches/1/priority", form)[0].startswith("303")

    def priorities() -> list[int]:
        with store.engine.connect() as conn:
            return [r[0] for r in conn.exec_driver_sql("SELECT priority FROM jobs ORDER BY id")]

    assert priorities() == [7, 7]
    assert store.claim(worker(), lease_seconds=30).job["id"] == 1  # type: ignore[union-attr]
    status, _ = call(app, "POST", "/jobs/2/priority", {**form, "priority": 9})
    assert status.startswith("303")
    status, _ = call(app, "POST", "/jobs/1/priority", {**form, "priority": 9})  # running now
    assert status.startswith("303")
    assert priorities() == [7, 9]

    def status_of(body: dict[str, Any]) -> str:
        raw = json.dumps(body).encode()
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/batches/1/priority"}
        environ |= {"HTTP_HOST": "127.0.0.1:8080", "CONTENT_TYPE": "application/json"}
        environ |= {"CONTENT_LENGTH": str(len(raw)), "wsgi.input": io.BytesIO(raw)}
        got: list[str] = []
        b"".join(app(environ, lambda status, _h: got.append(status)))
        return got[0]

    assert status_of({**form, "priority": "high"}).startswith("400")
    assert status_of({"priority": 1}).startswith("403")
