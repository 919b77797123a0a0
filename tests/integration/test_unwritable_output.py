"""An output folder the process cannot write into, and stops that do not wait for a disk that
may not come back.

- a staging folder that cannot be written pauses the worker (or the coordinator) as a full
  disk does: the image is kept, nothing is made twice, work resumes when it can be written;
- any other OS error publishing one job's image is that job's state: succeeded, its bytes
  staged, the error and the next try recorded (``status`` counts it), tried again with backoff
  and at every start; the other jobs go on, and nothing raises;
- a stop while an image cannot be saved leaves at once: the job is given back, or (its success
  recorded) left for the next start to publish, without spinning.

The folders are made unwritable for real (``tests.unwritable``: chmod, or as root an immutable
folder or a file in its place); each errno is also injected at the publish's fault point."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contract import faults
from contract import protocol as proto
from contract.errors import DiskFull, OutputUnwritable, PublishBlocked
from orchestrator.ownership import MARKER
from orchestrator.results import STAGING, Results, stage
from orchestrator.status import health_lines, overview
from orchestrator.store import JobStore
from orchestrator.transports.local import LocalWorker
from orchestrator.verify import verify
from tests.conftest import coordinator, submit_text, worker
from tests.integration.test_coordinator import finish, payload
from tests.integration.test_coordinator import png as rgb
from tests.integration.test_results import local_worker, output, png, published
from tests.unwritable import unwritable
from workers.task import PipelineCache, TaskOutput


@pytest.fixture(autouse=True)
def no_faults() -> Iterator[None]:
    yield
    faults.configure(None)


def counting_runner(calls: list[int]) -> Callable[..., TaskOutput]:
    def run(job: dict[str, Any], _c: PipelineCache, _s: Callable[[], bool]) -> TaskOutput:
        calls.append(job["id"])
        return output(job["id"])

    return run


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def blocked(store: JobStore, job_id: int) -> dict[str, Any]:
    """The job as a blocked publish leaves it: succeeded, not published, why and when next."""
    job = store.get_job(job_id)
    assert job["status"] == "succeeded" and job["published_at"] is None, job
    assert job["last_error"].startswith("cannot publish "), job["last_error"]
    assert job["not_before"] >= job["finished_at"] + 2
    assert [a["status"] for a in job["attempt_rows"]] == ["succeeded"]
    return job


def two_batches(store: JobStore) -> None:
    submit_text(store, "prompt,num_images\na,2\n")  # batch 1: jobs 1, 2
    submit_text(store, "prompt,num_images\nb,2\n")  # batch 2: jobs 3, 4


# -- one job's folder: that job's state ------------------------------------------------------


def test_a_job_whose_folder_cannot_be_written_waits_and_the_others_go_on(
    store: JobStore, tmp_path: Path
) -> None:
    two_batches(store)
    out = tmp_path / "out"
    calls: list[int] = []
    with unwritable(out / "1") as how:
        stats = local_worker(store, out, counting_runner(calls)).run()
        assert stats.succeeded == 4, how
        assert published(store, 3) == png(3) and published(store, 4) == png(4)
        jobs = [blocked(store, 1), blocked(store, 2)]
        assert str(out / "1") in jobs[0]["last_error"]
        # the backoff: not due before its time, due at it
        due = {r["id"] for r in store.list_unpublished(due=jobs[0]["not_before"] - 0.5)}
        assert 1 not in due and 1 in {
            r["id"] for r in store.list_unpublished(due=jobs[0]["not_before"])
        }
        data = overview(store)
        assert data["unpublished"]["count"] == 2 and data["unpublished"]["blocked"] == 2
        lines = health_lines(data)
        assert "Not published: 2 succeeded jobs' images wait in the staging folder" in lines[-3]
        assert lines[-2].startswith("  job 1: cannot publish ") and "next try in" in lines[-2]
        # tried again at once when asked (a start, verify --repair): fails alike, raises nothing
        assert Results(store, out).recover(backoff=False) == 2
        assert store.get_job(1)["published_at"] is None
        assert len(list((out / STAGING).iterdir())) == 2  # the bytes are kept
    # the folder can be written again: the next start publishes, nothing is made twice
    assert local_worker(store, out, counting_runner(calls)).run().succeeded == 0
    assert published(store, 1) == png(1) and published(store, 2) == png(2)
    assert calls == [1, 2, 3, 4]
    assert store.get_job(1)["last_error"] is None
    assert overview(store)["unpublished"] == {"count": 0, "blocked": 0, "examples": []}
    assert verify(store, out).clean


def commit_unpublished(store: JobStore, out: Path, value: int) -> int:
    """A job committed but not published, as a process killed in between leaves it."""
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    final = Results(store, out).final_path(claim.job)
    staged = stage(final, claim.attempt_id, png(value), out)
    assert store.complete(claim, str(final), staged.sha256, {})
    return claim.job_id


def test_start_up_recovery_skips_and_records_a_job_it_cannot_publish(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    submit_text(store, "prompt\nb\n")
    out = tmp_path / "out"
    first, second = commit_unpublished(store, out, 1), commit_unpublished(store, out, 2)
    with unwritable(out / "1"):
        # a worker starting here neither crashes nor makes anything
        assert local_worker(store, out, counting_runner([])).run().succeeded == 0
        blocked(store, first)
        assert published(store, second) == png(2)
    assert Results(store, out).recover(backoff=False) == 1
    assert published(store, first) == png(1)
    assert verify(store, out).clean


@pytest.mark.parametrize(
    "name", ["EACCES", "EPERM", "EROFS", "ENOTDIR", "EEXIST", "EISDIR", "ENAMETOOLONG", "EXDEV"]
)
def test_any_os_error_publishing_one_image_is_that_jobs_state(
    store: JobStore, tmp_path: Path, name: str
) -> None:
    two_batches(store)
    out = tmp_path / "out"
    calls: list[int] = []
    faults.configure("results.publish=" + name.lower() + "@1+")  # every publish fails so
    assert local_worker(store, out, counting_runner(calls)).run().succeeded == 4
    for job_id in (1, 2, 3, 4):
        assert f"({name})" in blocked(store, job_id)["last_error"]
    assert overview(store)["unpublished"]["blocked"] == 4
    faults.configure(None)
    assert Results(store, out).recover(backoff=False) == 4
    assert [published(store, j) for j in (1, 2, 3, 4)] == [png(1), png(2), png(3), png(4)]
    assert calls == [1, 2, 3, 4]
    assert verify(store, out).clean


def test_publish_raises_blocked_and_a_full_disk_stays_a_pause(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    out = tmp_path / "out"
    job_id = commit_unpublished(store, out, 1)
    row = store.list_unpublished()[0]
    results = Results(store, out)
    staged = out / STAGING / f"{row['attempt_id']}.png"
    faults.configure("results.publish=eacces")
    with pytest.raises(PublishBlocked, match=r"Permission denied.*\(EACCES\)"):
        results.publish(job_id, staged, Path(row["output_path"]), row["output_sha256"])
    faults.configure("results.publish=enospc")
    with pytest.raises(DiskFull):
        results.publish(job_id, staged, Path(row["output_path"]), row["output_sha256"])
    assert store.get_job(job_id)["last_error"].startswith("cannot publish")  # from the first
    faults.configure(None)
    assert results.publish(job_id, staged, Path(row["output_path"]), row["output_sha256"])
    assert published(store, job_id) == png(1)


# -- the staging folder: every job's, so a pause ---------------------------------------------


def run_in_thread(w: LocalWorker) -> threading.Thread:
    # daemon: a worker that never stops must not keep the test process alive
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    return thread


def test_an_unwritable_staging_folder_pauses_the_worker_and_keeps_its_image(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, "prompt,num_images\na,2\n")
    out = tmp_path / "out"
    calls: list[int] = []
    w = local_worker(store, out, counting_runner(calls), pause_seconds=0.05)
    with unwritable(out / STAGING) as how:
        thread = run_in_thread(w)
        wait_until(lambda: w._paused, f"the worker to pause ({how})")
        assert "cannot write into" in str(w._paused), w._paused
        assert store.get_job(1)["status"] == "running"  # still ours, lease renewed
    thread.join(60)
    assert not thread.is_alive()
    assert calls == [1, 2]  # the image was kept through the pause
    assert published(store, 1) == png(1) and published(store, 2) == png(2)
    assert verify(store, out).clean


# -- a stop while an image cannot be saved ---------------------------------------------------


def test_a_stop_while_the_disk_is_full_gives_the_job_back_at_once(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    out = tmp_path / "out"
    faults.configure("results.before_rename=enospc@1+")  # staging never has room
    w = local_worker(store, out, counting_runner([]), pause_seconds=0.05)
    thread = run_in_thread(w)
    wait_until(lambda: w._paused, "the worker to pause")
    w.request_stop()  # one signal: a job that cannot be saved is not waited for
    thread.join(60)
    assert not thread.is_alive(), "the worker waited for a disk that stays full"
    job = store.get_job(1)
    assert (job["status"], job["attempts"]) == ("pending", 0)
    assert [a["status"] for a in job["attempt_rows"]] == ["released"]
    assert "stopped before its image was saved" in job["attempt_rows"][0]["error"]
    assert not [
        p for p in out.rglob("*") if p.is_file() and p.name != MARKER
    ]  # nothing half-written


def test_a_second_stop_while_a_committed_image_cannot_be_published_does_not_spin(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    out = tmp_path / "out"
    fired = tmp_path / "fired.txt"
    faults.configure(f"results.publish=enospc@1+;fired={fired}")
    calls: list[int] = []
    w = local_worker(store, out, counting_runner(calls), pause_seconds=0.05)
    thread = run_in_thread(w)
    wait_until(lambda: w._paused, "the worker to pause")
    w.request_stop()
    w.request_stop()
    thread.join(60)
    assert not thread.is_alive(), "the worker kept trying to publish"
    # a handful of tries (one per backoff step, and one at the stop), not a million
    assert len(fired.read_text().split()) < 20
    job = store.get_job(1)
    assert job["status"] == "succeeded" and job["published_at"] is None
    faults.configure(None)
    # the next start publishes the committed image; it is not made again
    assert local_worker(store, out, counting_runner(calls)).run().succeeded == 0
    assert published(store, 1) == png(1) and calls == [1]
    assert verify(store, out).clean


# -- the coordinator -------------------------------------------------------------------------


def test_the_coordinator_goes_on_when_one_jobs_folder_cannot_be_written(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    submit_text(store, "prompt\nb\n")
    c = coordinator(store, redis, tmp_path, window=2)
    assert c._dispatch() == 2
    by_job = {payload(redis, rq_id)["id"]: rq_id for rq_id in c.in_flight()}
    out = tmp_path / "out"
    with unwritable(out / "1"):
        for job_id, rq_id in by_job.items():
            finish(redis, rq_id, rgb((job_id, 0, 0)))
        c._drain_events(block=False)  # raises nothing
        assert redis.llen(proto.PROCESSING_KEY) == 0
        assert not any(redis.exists(proto.image_key(r)) for r in by_job.values())
        blocked(store, 1)
        assert published(store, 2) == rgb((2, 0, 0))
        # a coordinator starting now: its first tick tries again, records, goes on
        store.release_coordinator(c.holder)
        c2 = coordinator(store, redis, tmp_path)
        c2.tick()
        blocked(store, 1)
    c2._shutdown()  # what it does as it stops: tries every waiting image
    assert published(store, 1) == rgb((1, 0, 0))
    assert verify(store, out).clean


def test_an_unwritable_staging_folder_pauses_the_coordinator_and_keeps_the_result(
    store: JobStore, redis: Any, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    c = coordinator(store, redis, tmp_path, window=1)
    c._dispatch()
    (rq_id,) = c.in_flight()
    finish(redis, rq_id)
    with unwritable(tmp_path / "out" / STAGING), pytest.raises(OutputUnwritable):
        c._drain_events(block=False)
    assert redis.llen(proto.PROCESSING_KEY) == 1 and redis.exists(proto.image_key(rq_id))
    c._drain_events(block=False)
    assert published(store, 1) == rgb()


def test_an_injected_errno_is_a_real_os_error() -> None:
    faults.configure("x=erofs@2+")
    faults.point("x")
    for _ in range(3):
        with pytest.raises(OSError) as info:
            faults.point("x")
        assert info.value.errno == errno.EROFS
