"""Workers killed at the worst moment: every job still finishes exactly once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.helpers import Cli, query, running_job, wait_for_running, write

pytestmark = pytest.mark.slow


# 192 px with 12 steps: about a second a job on the tiny model, long enough to kill mid-job.
SLOW_JOBS = "prompt,seed,steps,width,height,num_images\na slow one,1,12,192,192,4\n"


def test_sigkill_mid_job_then_another_worker_finishes_all_exactly_once(
    cli: Cli, tmp_path: Path
) -> None:
    write(tmp_path / "slow.csv", SLOW_JOBS)
    cli("submit", "slow.csv")
    db = tmp_path / "orchestrate.db"
    victim = cli.popen("work", "--local", "--burst", "--lease", "2")
    killed_job = wait_for_running(db)
    time.sleep(0.3)  # well inside the job
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert running_job(db) == killed_job  # left behind, lease still held

    cli("work", "--local", "--burst", "--lease", "2", timeout=600)

    statuses = query(db, "SELECT status, count(*) FROM jobs GROUP BY status")
    succeeded_attempts = query(
        db, "SELECT job_id, count(*) FROM attempts WHERE status = 'succeeded' GROUP BY job_id"
    )
    lost = query(db, "SELECT job_id, error FROM attempts WHERE status = 'lost'")
    assert statuses == [("succeeded", 4)]
    assert sorted(succeeded_attempts) == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert [j for j, _ in lost] == [killed_job]
    assert lost[0][1].startswith("lease expired: worker ")
    files = sorted(p.name for p in (tmp_path / "output").rglob("*") if p.is_file())
    assert files == [
        ".orchestrate-owner.json",
        "000001.png",
        "000002.png",
        "000003.png",
        "000004.png",
    ]


def test_sigterm_finishes_the_current_job_and_leaves_nothing_running(
    cli: Cli, tmp_path: Path
) -> None:
    write(tmp_path / "slow.csv", SLOW_JOBS)
    db = tmp_path / "orchestrate.db"
    proc = cli.popen("run", "slow.csv")
    job = wait_for_running(db)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    err = (tmp_path / "worker.log").read_text()
    assert proc.returncode == 130, err
    assert "SIGTERM: finishing the current job, then stopping" in err
    status = dict(query(db, "SELECT id, status FROM jobs"))
    assert status[job] == "succeeded"
    assert "running" not in status.values()
    # the rest is picked up by the next run
    assert "4/4 succeeded" in cli("run", "slow.csv").stdout


def test_second_sigint_releases_the_job_immediately(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "slow.csv", "prompt,seed,steps,width,height\nslower,1,200,192,192\n")
    db = tmp_path / "orchestrate.db"
    proc = cli.popen("run", "slow.csv")
    job = wait_for_running(db)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130, (tmp_path / "worker.log").read_text()
    assert query(db, "SELECT status, attempts FROM jobs WHERE id = ?", job) == [("pending", 0)]
    assert query(db, "SELECT status FROM attempts WHERE job_id = ?", job) == [("released",)]


def test_two_workers_share_one_database_and_each_job_runs_once(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "many.csv", "prompt,seed,steps,num_images\nshared,1,4,8\n")
    cli("submit", "many.csv")
    workers = [cli.popen("work", "--local", "--burst", log=f"w{i}.log") for i in range(2)]
    for w in workers:
        assert w.wait(timeout=300) == 0
    db = tmp_path / "orchestrate.db"
    assert query(db, "SELECT status, count(*) FROM jobs GROUP BY status") == [("succeeded", 8)]
    assert query(db, "SELECT count(*), count(DISTINCT job_id) FROM attempts") == [(8, 8)]
    assert len(list((tmp_path / "output" / "1").glob("*.png"))) == 8
