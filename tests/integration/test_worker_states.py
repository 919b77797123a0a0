"""Worker states a user can trust (issue 31, item 8): loading, busy on job N, idle, stale and
gone, with the job a silent worker held, through the coordinator's copy of RQ workers' hashes,
the workers table, ``status`` and the dashboard."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contract import protocol as proto
from orchestrator.config import WorkerSettings
from orchestrator.status import overview, render_text, workers
from orchestrator.store import JobStore
from orchestrator.transports import local
from orchestrator.transports.local import LocalWorker
from tests import fake_workers
from tests.conftest import coordinator, submit_text
from tests.helpers import wait_until
from tests.integration.test_dashboard_pages import Client, visible
from tests.integration.test_rq_worker import spawn
from tests.redis_server import RedisServer
from workers.task import PipelineCache, TaskOutput


def row(name: str, state: str, silent: float, **kw: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "name": name,
        "transport": "rq",
        "host": "mac",
        "pid": 1,
        "backend": "diffusers",
        "device": "mps",
        "model": "tiny",
        "state": state,
        "current_job": None,
        "jobs_done": 0,
        "jobs_failed": 0,
        "busy_s": 0.0,
        "started_at": now - 600,
        "last_seen": now - silent,
        "heartbeat_s": 5.0,
        **kw,
    }


def hold_lease(store: JobStore) -> None:
    assert store.acquire_coordinator("coord/1", host="queuehost", pid=1, ttl=60) is None


# -- from the table to what people read ----------------------------------------------------------


def test_each_state_is_shown_in_status_and_the_dashboard(store: JobStore) -> None:
    submit_text(store, "prompt,num_images\nx,2\n")
    with store.engine.begin() as conn:  # job 1 running, dispatched through Redis
        conn.exec_driver_sql(
            "UPDATE jobs SET status = 'running', lease_owner = 'rq:orc-1-1-abcdef/t' WHERE id = 1"
        )
        conn.exec_driver_sql(
            "INSERT INTO attempts (job_id, batch_id, number, status, worker, host, started_at) "
            "VALUES (1, 1, 1, 'running', 'killed', 'mac', 0)"
        )
    hold_lease(store)
    store.upsert_workers(
        [
            row("loader", "loading", 1, model="sd15"),
            row("worker", "busy", 2, current_job=2),
            row("waiter", "idle", 1),
            row("killed", "busy", 20, current_job=1),  # 3 heartbeats (15 s) missed
            row("dead", "idle", 120),  # 12 heartbeats and a minute
            row("left", "stopped", 30),  # exited cleanly
            row("slow", "idle", 60, heartbeat_s=30.0),  # its own window: 90 s
        ]
    )
    data = overview(store)
    shown = {w["name"]: (w["state"], w["liveness"]) for w in data["workers"]}
    assert shown["loader"][0] == "loading"
    assert re.fullmatch(r"loading model sd15, last seen \ds ago", shown["loader"][1])
    assert shown["worker"][0] == "busy" and shown["worker"][1].startswith("busy on job 2")
    assert shown["waiter"][0] == "idle"
    assert re.fullmatch(r"idle, last seen \ds ago", shown["waiter"][1])
    assert shown["killed"][0] == "stale"
    assert re.fullmatch(
        r"stale: silent for 2\ds; was busy on job 1 \(still running under it\)", shown["killed"][1]
    )
    assert shown["dead"][0] == "gone"
    assert re.fullmatch(r"gone: silent for 2m0\ds", shown["dead"][1])
    assert shown["left"][0] == "gone"
    assert re.fullmatch(r"stopped 3\ds ago", shown["left"][1])
    assert shown["slow"][0] == "idle"
    assert {w["name"]: w["reported_state"] for w in data["workers"]}["killed"] == "busy"

    text = render_text(data)
    assert re.search(r"killed .* stale .*stale: silent for 2\ds; was busy on job 1", text), text
    assert "No coordinator is running" not in text

    client = Client(store)
    page = client.page("/workers")
    killed = visible(re.search(r"<tr[^>]*>\s*<td>killed</td>.*?</tr>", page, re.S).group(0))  # type: ignore[union-attr]
    assert "stale #1" in killed and "was busy on job 1 (still running under it)" in killed
    assert '<span class="state gone">gone</span>' in page
    assert 'id="no-coordinator"' not in page
    api = {w["name"]: w for w in client.api("/api/workers")["workers"]}
    assert api["killed"]["state"] == "stale" and api["killed"]["busy_job"] == 1
    assert api["dead"]["state"] == "gone" and api["left"]["liveness"].startswith("stopped 3")


def test_without_a_coordinator_rq_workers_are_at_most_stale_and_status_says_why(
    store: JobStore,
) -> None:
    """Nobody copies RQ workers' heartbeats into the database while no coordinator runs: their
    silence then says nothing of them, and status says so; local workers are unaffected."""
    store.upsert_workers(
        [
            row("remote", "idle", 600),
            row("fresh", "idle", 1),
            {**row("here", "idle", 600), "transport": "local"},
        ]
    )
    data = overview(store)
    shown = {w["name"]: (w["state"], w["liveness"]) for w in data["workers"]}
    assert shown["remote"][0] == "stale"
    assert re.fullmatch(
        r"stale: not heard from for 10m0\ds \(no coordinator is running to relay it\)",
        shown["remote"][1],
    )
    assert shown["fresh"][0] == "idle"
    assert shown["here"][0] == "gone"  # a local worker writes its own row
    assert (
        "No coordinator is running: RQ workers are heard through it, so their rows are as it "
        "last saw them (`orchestrate coordinator`)"
    ) in render_text(data)
    assert 'id="no-coordinator"' in Client(store).page("/workers")


# -- RQ workers, for real ------------------------------------------------------------------------


@pytest.fixture
def gated(redis_server: RedisServer) -> Iterator[Callable[[str, float], Any]]:
    procs: list[Any] = []

    def start(name: str, heartbeat: float) -> Any:
        proc = spawn(fake_workers.gated_worker, redis_server.url, name, heartbeat)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join(30)


def hash_of(redis: Any, name: str) -> dict[str, str]:
    raw = redis.hgetall(proto.WORKER_KEY + name)
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_an_rq_worker_says_busy_when_it_takes_a_job_not_at_its_next_heartbeat(
    store: JobStore, redis: Any, tmp_path: Path, gated: Any
) -> None:
    submit_text(store, "prompt\nx\n")
    coord = coordinator(store, redis, tmp_path)
    redis.set("test:loaded", 1)
    gated("quick", 60.0)  # no heartbeat comes within this test
    wait_until(lambda: hash_of(redis, "quick").get("state") == "idle", "the worker to be idle")
    assert coord._dispatch() == 1
    h = wait_until(
        lambda: (h := hash_of(redis, "quick")).get("state") == "busy" and h, "the worker busy"
    )
    assert h["current_job"] == "1"
    coord._sync_workers()
    (w,) = workers(store)
    assert (w["state"], w["busy_job"]) == ("busy", 1)
    redis.set("test:go:1", 1)
    wait_until(lambda: hash_of(redis, "quick").get("state") == "idle", "the worker idle again")


@pytest.mark.slow  # waits for a killed worker to go stale, then gone
def test_a_killed_rq_worker_becomes_stale_then_gone_with_its_job(
    store: JobStore, redis: Any, tmp_path: Path, gated: Any
) -> None:
    submit_text(store, "prompt\nx\n")
    coord = coordinator(store, redis, tmp_path)
    victim = gated("victim", 0.2)
    wait_until(lambda: hash_of(redis, "victim").get("state") == "idle", "the worker to be idle")
    assert coord._dispatch() == 1
    # Its model loads for the job (a beat says so), then it runs the job.
    h = wait_until(
        lambda: (h := hash_of(redis, "victim")).get("state") == "loading" and h, "loading"
    )
    assert (h["current_job"], h["model"]) == ("1", "tiny")
    coord._sync_workers()
    assert workers(store)[0]["liveness"].startswith("loading model tiny for job 1, last seen")
    redis.set("test:loaded", 1)
    wait_until(lambda: hash_of(redis, "victim").get("state") == "busy", "busy")
    coord._drain_events(block=False)  # its "started": job 1 runs under it
    coord._sync_workers()
    (w,) = workers(store)
    assert w["state"] == "busy" and w["heartbeat_s"] == 2.0  # idle, it polls every 2 s

    victim.kill()
    victim.join(30)

    def shown() -> str:
        coord._sync_workers()  # its hash lives on for a minute: last seen must not move
        (w,) = workers(store)
        return str(w["state"])

    wait_until(lambda: shown() == "stale", "the killed worker to be shown stale", timeout=120)
    (w,) = workers(store)
    assert re.fullmatch(
        r"stale: silent for \d+s; was busy on job 1 \(still running under it\)", w["liveness"]
    ), w["liveness"]
    # As status would show it two minutes on, the coordinator still running:
    assert store.renew_coordinator(coord.holder, ttl=600)
    later = time.time() + 120
    (w,) = workers(store, later)
    assert w["state"] == "gone"
    assert w["liveness"].endswith("; was busy on job 1 (still running under it)")


def test_last_seen_is_measured_by_redis_not_by_the_workers_clock(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    """A worker whose clock is an hour ahead (or behind) is neither fresh for ever nor stale."""
    coord = coordinator(store, redis, tmp_path)
    for name, skew in (("ahead", 3600), ("behind", -3600)):
        key = proto.WORKER_KEY + name
        redis.hset(
            key,
            mapping={
                "name": name,
                "state": "idle",
                "last_seen": time.time() + skew,
                "heartbeat_s": 2.0,
                "ttl_s": 60,
            },
        )
        redis.expire(key, 57)  # published 3 s ago
    coord._sync_workers()
    seen = {w["name"]: time.time() - w["last_seen"] for w in workers(store)}
    assert seen["ahead"] == pytest.approx(3, abs=1.5)
    assert seen["behind"] == pytest.approx(3, abs=1.5)


# -- local workers -------------------------------------------------------------------------------


def test_a_local_worker_keeps_its_row_fresh_while_idle_and_says_when_it_stopped(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "ROW_EVERY_S", 0.1)

    def runner(_job: dict[str, Any], _c: PipelineCache, _s: Callable[[], bool]) -> TaskOutput:
        raise AssertionError("no job was submitted")

    worker = LocalWorker(
        store,
        WorkerSettings(output_dir=tmp_path / "out", poll_seconds=0.05),
        cache=PipelineCache(),
        runner=runner,
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        first = wait_until(lambda: store.list_workers(), "its row")[0]["last_seen"]
        wait_until(lambda: store.list_workers()[0]["last_seen"] > first + 0.15, "a fresher row")
        (w,) = workers(store)
        assert (w["state"], w["heartbeat_s"]) == ("idle", 0.1)
    finally:
        worker.request_stop()
        thread.join(30)
    (w,) = workers(store)
    assert (w["state"], w["reported_state"]) == ("gone", "stopped")
    assert w["liveness"].startswith("stopped ")
