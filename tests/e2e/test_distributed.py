"""Coordinator and RQ workers as separate processes against a real redis-server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract import protocol as proto
from tests.helpers import Cli, exactly_once, query, stop, wait_for_running, write
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

SLOW_JOBS = "prompt,seed,steps,width,height,num_images\nslow,1,12,192,192,4\n"
FAST_JOBS = "prompt,seed,steps,num_images\nfast,1,4,8\n"


def test_two_workers_and_a_coordinator_complete_a_batch(
    rcli: Cli, tmp_path: Path, redis_server: RedisServer
) -> None:
    write(tmp_path / "j.csv", FAST_JOBS)
    rcli("submit", "j.csv")
    workers = [rcli.popen("worker", "--name", f"mac{i}", log=f"w{i}.log") for i in range(2)]
    try:
        done = rcli("coordinator", "--until-done", timeout=300)
        assert "8/8" in done.stderr or "[8/8]" in done.stderr
        db = tmp_path / "orchestrate.db"
        exactly_once(db, 8)
        # both Macs worked (the window hands out two jobs per live worker)
        hosts = {w for (w,) in query(db, "SELECT DISTINCT worker FROM attempts")}
        assert hosts == {"mac0", "mac1"}
        assert len(list((tmp_path / "output" / "1").glob("*.png"))) == 8
        # `rq info` sees the project's queue and workers
        info = subprocess.run(
            [str(Path(sys.executable).parent / "rq"), "info", "--url", redis_server.url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert proto.queue_for("tiny") in info
        assert "mac0 (" in info and "mac1 (" in info
        status = rcli("status").stdout
        assert "mac0" in status and "rq diffusers cpu" in status
    finally:
        stop(*workers)
    assert [w.returncode for w in workers] == [0, 0]


def test_sigkill_of_a_worker_mid_job_is_retried_elsewhere_once(rcli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "j.csv", SLOW_JOBS)
    rcli("submit", "j.csv")
    db = tmp_path / "orchestrate.db"
    coord = rcli.popen("coordinator", "--until-done", "--lost-after", "1", log="coord.log")
    victim = rcli.popen("worker", "--name", "victim", "--heartbeat", "0.5", log="victim.log")
    try:
        job = wait_for_running(db, timeout=120)
        time.sleep(0.3)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        rescuer = rcli.popen("worker", "--name", "rescuer", "--heartbeat", "0.5", log="rescuer.log")
        try:
            assert coord.wait(180) == 0, (tmp_path / "coord.log").read_text()
        finally:
            stop(rescuer)
        exactly_once(db, 4)
        lost = query(db, "SELECT job_id, worker, finished_at FROM attempts WHERE status = 'lost'")
        assert [(j, w) for j, w, _ in lost] == [(job, "victim")]
        rescued = query(
            db, "SELECT worker FROM attempts WHERE job_id = ? AND status = 'succeeded'", job
        )
        assert rescued == [("rescuer",)]
        # (how long recovery takes is measured by benchmarks/recovery.py, not asserted here)
    finally:
        stop(coord, victim)


@pytest.mark.private_redis
def test_redis_restart_mid_run_loses_nothing(
    rcli: Cli, tmp_path: Path, redis_server: RedisServer
) -> None:
    write(tmp_path / "j.csv", SLOW_JOBS)
    rcli("submit", "j.csv")
    db = tmp_path / "orchestrate.db"
    coord = rcli.popen("coordinator", "--until-done", "--lost-after", "2", log="coord.log")
    worker = rcli.popen("worker", "--heartbeat", "0.5", log="worker.log")
    try:
        wait_for_running(db, timeout=120)
        redis_server.restart()  # everything in Redis is gone
        assert coord.wait(240) == 0, (tmp_path / "coord.log").read_text()
        exactly_once(db, 4)
        assert len(list((tmp_path / "output" / "1").glob("*.png"))) == 4
        assert worker.poll() is None, "the worker survived the restart"
    finally:
        stop(coord, worker)


def test_coordinator_killed_and_restarted_resumes(rcli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "j.csv", SLOW_JOBS)
    rcli("submit", "j.csv")
    db = tmp_path / "orchestrate.db"
    worker = rcli.popen("worker", "--heartbeat", "0.5", log="worker.log")
    coord = rcli.popen("coordinator", log="coord1.log")
    try:
        wait_for_running(db, timeout=120)
        coord.send_signal(signal.SIGKILL)
        coord.wait(10)
        time.sleep(1.5)  # the worker goes on; its results wait in Redis
        again = rcli("coordinator", "--until-done", timeout=240)
        assert "jobs in flight" in again.stderr
        exactly_once(db, 4)
        assert len(list((tmp_path / "output" / "1").glob("*.png"))) == 4
    finally:
        stop(coord, worker)
