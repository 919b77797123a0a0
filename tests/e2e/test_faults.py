"""Faults a night brings, each against the real command: a locked database, a second
coordinator, a Redis outage under a busy worker, a full output disk."""

from __future__ import annotations

import multiprocessing
import resource
import sqlite3
import time
from pathlib import Path

import pytest

from tests import fake_workers
from tests.helpers import Cli, exactly_once, query, stop, wait_for_running, wait_until, write
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)

SLOW_JOBS = "prompt,seed,steps,width,height,num_images\nslow,1,12,192,192,4\n"


def test_a_locked_database_is_a_clear_message_never_a_traceback(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "j.csv", "prompt\na\n")
    cli("submit", "j.csv")
    locker = sqlite3.connect(tmp_path / "orchestrate.db", timeout=0, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # a writer that holds the lock past the busy timeout
    try:
        cli.env["ORCHESTRATE_BUSY_TIMEOUT"] = "0.5"
        write(tmp_path / "k.csv", "prompt\nb\n")
        proc = cli("submit", "k.csv", check=3)
        assert "is busy: another process held its write lock for more than 0 s" in proc.stderr
        assert "Traceback" not in proc.stderr
        # an idle worker waits it out in one line, then works
        worker = cli.popen("work", "--local", "--burst", "--poll", "0.1", log="w.log")
        wait_until(lambda: "paused" in (tmp_path / "w.log").read_text(), "the worker to pause")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    try:
        assert worker.wait(120) == 0
    finally:
        stop(worker)
    log = (tmp_path / "w.log").read_text()
    assert "Traceback" not in log and "resumed" in log
    assert query(tmp_path / "orchestrate.db", "SELECT status FROM jobs") == [("succeeded",)]


def test_a_second_coordinator_refuses_naming_the_first(rcli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "j.csv", "prompt\na\n")
    rcli("submit", "j.csv")
    first = rcli.popen("coordinator", log="c1.log")
    try:
        wait_until(
            lambda: "jobs in flight" in (tmp_path / "c1.log").read_text(), "the first to start"
        )
        second = rcli("coordinator", check=1)
        assert f"another coordinator runs on this database: pid {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        stop(first)
    # stopped cleanly: the next one starts at once
    again = rcli.popen("coordinator", log="c2.log")
    try:
        wait_until(lambda: "jobs in flight" in (tmp_path / "c2.log").read_text(), "a restart")
    finally:
        stop(again)


@pytest.mark.private_redis
def test_a_busy_worker_rides_out_a_redis_outage(
    rcli: Cli, tmp_path: Path, redis_server: RedisServer
) -> None:
    write(tmp_path / "j.csv", SLOW_JOBS)
    rcli("submit", "j.csv")
    db = tmp_path / "orchestrate.db"
    coord = rcli.popen("coordinator", "--until-done", log="coord.log")
    worker = rcli.popen("worker", "--heartbeat", "0.5", log="worker.log")
    try:
        running = wait_for_running(db, timeout=120)
        redis_server.stop()  # an outage of several seconds: jobs finish meanwhile
        time.sleep(6)
        redis_server.start()  # back, and empty
        assert coord.wait(300) == 0, (tmp_path / "coord.log").read_text()
        assert worker.poll() is None, "the worker survived the outage"
        exactly_once(db, 4)
        # the job that was running when Redis went away was kept and delivered by its worker
        rows = query(db, "SELECT status FROM attempts WHERE job_id = ? ORDER BY id", running)
        assert rows == [("succeeded",)], rows
        log = (tmp_path / "worker.log").read_text()
        assert "cannot reach Redis at 127.0.0.1:" in log and "Redis is back after" in log
        assert "Traceback" not in log
    finally:
        stop(coord, worker)


def test_a_full_output_disk_pauses_the_worker_and_loses_nothing(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "j.csv", "prompt,seed,num_images\nbig,1,3\n")
    cli("submit", "j.csv")
    db = tmp_path / "orchestrate.db"
    url = f"sqlite:///{db}"
    proc = multiprocessing.get_context("spawn").Process(
        target=fake_workers.big_image_local_worker,
        args=(url, str(tmp_path / "output"), 1_500_000),
    )
    proc.start()
    try:
        wait_until(
            lambda: (
                query(db, "SELECT state, message FROM workers")[:1]
                and query(db, "SELECT state FROM workers")[0][0] == "paused"
            ),
            "the worker to pause",
        )
        ((message,),) = query(db, "SELECT message FROM workers")
        assert "File too large" in message or "no room" in message
        status = cli("status", "--plain").stdout
        assert "paused:" in status
        assert query(db, "SELECT count(*) FROM jobs WHERE status = 'succeeded'") == [(0,)]
        # nothing half-written: no image, no temporary file left behind
        assert not list((tmp_path / "output").rglob("*.png"))
        assert not list((tmp_path / "output").rglob("*.tmp"))
        # space comes back
        assert proc.pid is not None
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        proc.join(120)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert query(db, "SELECT status, count(*) FROM jobs GROUP BY status") == [("succeeded", 3)]
    # each image was made once and kept through the pause
    assert query(db, "SELECT count(*) FROM attempts") == [(3,)]
    assert cli("verify").stdout.strip().endswith("all is well")


def test_verify_exit_codes(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "j.csv", "prompt,seed,steps\na,1,2\n")
    cli("run", "j.csv")
    assert cli("verify").returncode == 0
    image = next((tmp_path / "output" / "1").glob("*.png"))
    image.write_bytes(b"damaged")
    report = cli("verify", check=1).stdout
    assert "image damaged (sha256 differs)" in report
    repaired = cli("verify", "--repair").stdout
    assert "repaired: 1 jobs with a missing or damaged image put back to pending" in repaired
    cli("run")
    assert cli("verify").returncode == 0


def test_read_only_commands_never_create_a_database(cli: Cli, tmp_path: Path) -> None:
    for args in (
        ("status",),
        ("jobs", "list"),
        ("verify",),
        ("export", "out", "--format", "parquet"),
    ):
        proc = cli(*args, check=2)
        assert "no job database at" in proc.stderr, args
    assert not (tmp_path / "orchestrate.db").exists()
    write(tmp_path / "j.csv", "prompt\na\n")
    cli("submit", "j.csv")
    assert "no batch 99" in cli("status", "--batch", "99", check=2).stderr
