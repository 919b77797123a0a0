"""The output folder against the real commands: one job's folder that cannot be written (both
transports), and a stop (SIGTERM, Ctrl-C twice) while the disk is full. Every wait on a
process is bounded; a full disk is injected at the results path's fault points."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import Cli, exactly_once, query, stop, wait_until, write
from tests.unwritable import unwritable

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)

ONE = "prompt,seed,steps\na,1,2\n"


def popen_with_faults(cli: Cli, spec: str, *args: str, log: str) -> subprocess.Popen[bytes]:
    env = cli.env
    cli.env = {**env, "ORCHESTRATE_FAULTS": spec}
    try:
        return cli.popen(*args, log=log)
    finally:
        cli.env = env


def paused(db: Path) -> bool:
    try:
        return any(state == "paused" for (state,) in query(db, "SELECT state FROM workers"))
    except Exception:  # the database is not made yet
        return False


def test_sigterm_while_paused_on_a_full_disk_gives_the_job_back_and_exits(
    cli: Cli, tmp_path: Path
) -> None:
    write(tmp_path / "j.csv", ONE)
    db = tmp_path / "orchestrate.db"
    proc = popen_with_faults(cli, "results.before_rename=enospc@1+", "run", "j.csv", log="r.log")
    wait_until(lambda: paused(db), "run to pause on the full disk")
    proc.send_signal(signal.SIGTERM)  # a service manager's stop: one signal
    rc = proc.wait(timeout=60)
    log = (tmp_path / "r.log").read_text()
    assert rc == 130, log
    assert "stopping now; paused (job 1: no room to write" in log
    assert "job 1 given back: stopped before its image was saved" in log
    assert "Traceback" not in log
    assert query(db, "SELECT status, attempts FROM jobs") == [("pending", 0)]
    assert query(db, "SELECT status FROM attempts") == [("released",)]
    assert "1/1 succeeded" in cli("run", "j.csv").stdout
    assert cli("verify").stdout.strip().endswith("all is well")


def test_ctrl_c_twice_while_a_committed_image_cannot_be_published_exits_without_spinning(
    cli: Cli, tmp_path: Path
) -> None:
    write(tmp_path / "j.csv", ONE)
    db = tmp_path / "orchestrate.db"
    fired = tmp_path / "fired.txt"
    spec = f"results.publish=enospc@1+;fired={fired}"
    proc = popen_with_faults(cli, spec, "run", "j.csv", log="r.log")
    wait_until(lambda: paused(db), "run to pause with its image committed")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    log = (tmp_path / "r.log").read_text()
    assert rc == 130, log
    assert "job 1 succeeded but its image is not in place" in log
    assert "the next start of a worker or the coordinator publishes it" in log
    assert "1 succeeded job's image is not in place yet" in log
    assert "Traceback" not in log
    assert len(fired.read_text().split()) < 20  # a few tries, not a million
    assert query(db, "SELECT status, published_at IS NULL FROM jobs") == [("succeeded", 1)]
    # the next start publishes it; it is not made again
    again = cli("run", "j.csv")
    assert "1/1 succeeded" in again.stdout and "not in place" not in again.stderr
    exactly_once(db, 1)
    assert cli("verify").stdout.strip().endswith("all is well")


def test_run_goes_on_past_a_batch_folder_it_cannot_write_and_says_so(
    cli: Cli, tmp_path: Path
) -> None:
    write(tmp_path / "a.csv", "prompt,seed,steps,num_images\na,1,2,2\n")
    write(tmp_path / "b.csv", "prompt,seed,steps,num_images\nb,1,2,2\n")
    cli("submit", "a.csv")  # batch 1
    out = tmp_path / "output"
    with unwritable(out / "1") as how:
        done = cli("run", "b.csv", check=1)  # batch 2, and batch 1 waiting in the queue
        assert "2/2 succeeded" in done.stdout, how
        assert "2 succeeded jobs' images are not in place yet" in done.stderr
        assert "job 1: cannot publish " in done.stderr and "Traceback" not in done.stderr
        status = cli("status", "--plain").stdout
        assert "Not published: 2 succeeded jobs' images wait in the staging folder" in status
        assert cli("status", "--json").stdout.count('"blocked": 2') == 1
        assert len(list((out / "2").glob("*.png"))) == 2
    again = cli("run", "a.csv")  # writable again: published at start, nothing made twice
    assert "2/2 succeeded" in again.stdout
    exactly_once(tmp_path / "orchestrate.db", 4)
    assert cli("verify").stdout.strip().endswith("all is well")


@pytest.mark.subprocess
def test_the_coordinator_goes_on_past_a_batch_folder_it_cannot_write(
    rcli: Cli,
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.csv", "prompt,seed,steps,num_images\na,1,2,2\n")
    write(tmp_path / "b.csv", "prompt,seed,steps,num_images\nb,1,2,2\n")
    rcli("submit", "a.csv")
    rcli("submit", "b.csv")
    db = tmp_path / "orchestrate.db"
    out = tmp_path / "output"
    worker = rcli.popen("worker", "--heartbeat", "0.5", log="worker.log")
    try:
        with unwritable(out / "1") as how:
            first = rcli("coordinator", "--until-done", check=1, timeout=300)
            assert "Traceback" not in first.stderr, first.stderr
            assert "stopping with 2 succeeded jobs' images not in place" in first.stderr, how
            assert query(db, "SELECT count(*) FROM jobs WHERE published_at IS NULL") == [(2,)]
            assert len(list((out / "2").glob("*.png"))) == 2
        rcli("coordinator", "--until-done", timeout=300)  # publishes them as it starts
        exactly_once(db, 4)
        assert rcli("verify").stdout.strip().endswith("all is well")
    finally:
        stop(worker)
