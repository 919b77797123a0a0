"""Micro-batching end to end, in both transports, as a user runs it: a manifest mixing the
built-in models (tiny, tiny-xl and the flow-matching tiny-sd3, tiny-flux, tiny-flux2 and
tiny-zimage) run with ``--batch-size 3`` makes, job for job, the pixels its unbatched run makes,
each job exactly once; and a worker killed mid-batch loses none."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import Cli, cli_for, exactly_once, query, stop, wait_for_running, write
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)

MIXED = (
    "prompt,seed,model,steps,num_images,scheduler\n"
    "a red circle on a blue background,1,tiny,6,3,\n"
    "two small yellow squares on a green background,10,tiny-xl,6,3,\n"
    "a white triangle at the top left on a black background,20,tiny,6,2,\n"
    "a blue square,30,tiny-sd3,4,3,dpmpp_2m\n"
    "a green circle,40,tiny-flux,4,2,flow_euler\n"
    "a red triangle,50,tiny-flux2,4,3,unipc\n"
    "a yellow circle,60,tiny-zimage,4,2,dpmpp_2m\n"
)
JOBS = 18


def pixels_by_job(db: Path) -> dict[int, str]:
    out = {}
    for job_id, path in query(db, "SELECT id, output_path FROM jobs ORDER BY id"):
        out[job_id] = hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()
    return out


def batch_sizes(db: Path) -> list[int]:
    rows = query(db, "SELECT batch_size FROM attempts WHERE status = 'succeeded' ORDER BY job_id")
    return [n for (n,) in rows]


@pytest.fixture(scope="module")
def unbatched(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict[int, str]:
    """The manifest's images run alone (once for the module), by job id."""
    home = tmp_path_factory.mktemp("alone")
    write(home / "mixed.csv", MIXED)
    cli_for(home, model_cache, in_process=True)("run", "mixed.csv", timeout=600)
    return pixels_by_job(home / "orchestrate.db")


def test_local_batches_make_the_unbatched_images_once_each(
    cli: Cli, tmp_path: Path, unbatched: dict[int, str]
) -> None:
    write(tmp_path / "mixed.csv", MIXED)
    cli("run", "mixed.csv", "--batch-size", "3", timeout=600)
    db = tmp_path / "orchestrate.db"
    exactly_once(db, JOBS)
    assert batch_sizes(db) == [3, 3, 3, 3, 3, 3, 2, 2, 3, 3, 3, 2, 2, 3, 3, 3, 2, 2]
    assert pixels_by_job(db) == unbatched


@pytest.mark.subprocess
def test_rq_batches_make_the_unbatched_images_once_each(
    cli: Cli, tmp_path: Path, redis_server: RedisServer, unbatched: dict[int, str]
) -> None:
    write(tmp_path / "mixed.csv", MIXED)
    cli.env["ORCHESTRATE_REDIS_URL"] = redis_server.url
    cli("submit", "mixed.csv")
    worker = cli.popen("worker", "--name", "mac", "--batch-size", "3", log="w.log")
    try:
        cli("coordinator", "--until-done", timeout=600)
    finally:
        stop(worker)
    db = tmp_path / "orchestrate.db"
    exactly_once(db, JOBS)
    sizes = batch_sizes(db)
    assert max(sizes) > 1, f"no job shared a call: {sizes}"  # how jobs meet depends on timing
    assert pixels_by_job(db) == unbatched


def wait_for_batch(db: Path, n: int, timeout: float = 120) -> None:
    """Until ``n`` jobs run at once (one batch), on a slow machine too."""
    deadline = time.monotonic() + timeout
    while len(query(db, "SELECT id FROM jobs WHERE status = 'running'")) < n:
        assert time.monotonic() < deadline, f"a batch of {n} never started"
        time.sleep(0.05)


SLOW_JOBS = "prompt,seed,steps,width,height,num_images\na slow one,1,12,192,192,6\n"
# The same on a flow-matching model: a batch of its transformer calls split per image.
SLOW_FLOW_JOBS = (
    "prompt,model,seed,steps,width,height,num_images\na slow one,tiny-flux,1,24,256,256,6\n"
)


@pytest.mark.parametrize("manifest", [SLOW_JOBS, SLOW_FLOW_JOBS], ids=["tiny", "tiny-flux"])
def test_sigkill_mid_batch_then_another_worker_finishes_all_exactly_once(
    cli: Cli, tmp_path: Path, manifest: str
) -> None:
    write(tmp_path / "slow.csv", manifest)
    cli("submit", "slow.csv")
    db = tmp_path / "orchestrate.db"
    victim = cli.popen("work", "--local", "--burst", "--lease", "2", "--batch-size", "3")
    wait_for_running(db)
    wait_for_batch(db, 3)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed = query(db, "SELECT id FROM jobs WHERE status = 'running' ORDER BY id")
    assert len(killed) == 3  # the whole batch left behind, leases still held

    cli("work", "--local", "--burst", "--lease", "2", "--batch-size", "3", timeout=600)

    exactly_once(db, 6)
    lost = query(db, "SELECT job_id FROM attempts WHERE status = 'lost' ORDER BY job_id")
    assert lost == killed
    assert len(list((tmp_path / "output" / "1").glob("*.png"))) == 6


@pytest.mark.subprocess
def test_rq_worker_sigkilled_mid_batch_loses_no_job(
    cli: Cli, tmp_path: Path, redis_server: RedisServer
) -> None:
    write(tmp_path / "slow.csv", SLOW_JOBS)
    cli.env["ORCHESTRATE_REDIS_URL"] = redis_server.url
    cli("submit", "slow.csv")
    db = tmp_path / "orchestrate.db"
    coord = cli.popen("coordinator", "--until-done", "--lost-after", "1", log="coord.log")
    victim = cli.popen(
        "worker", "--name", "victim", "--heartbeat", "0.5", "--batch-size", "3", log="victim.log"
    )
    try:
        wait_for_running(db, timeout=120)
        wait_for_batch(db, 3)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed = query(db, "SELECT id FROM jobs WHERE status = 'running' ORDER BY id")
        rescuer = cli.popen("worker", "--name", "rescuer", "--heartbeat", "0.5", log="rescuer.log")
        try:
            assert coord.wait(300) == 0, (tmp_path / "coord.log").read_text()
        finally:
            stop(rescuer)
        exactly_once(db, 6)
        lost = query(
            db, "SELECT job_id, worker FROM attempts WHERE status = 'lost' ORDER BY job_id"
        )
        assert lost == [(j, "victim") for (j,) in killed]
        assert len(killed) >= 3
    finally:
        stop(coord, victim)
