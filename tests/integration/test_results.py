"""The fenced results path: a job's file is exactly the bytes of its succeeded attempt, and no
superseded, cancelled or late attempt creates, replaces or deletes it."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from contract.errors import DiskFull
from orchestrator.config import WorkerSettings
from orchestrator.results import STAGING, Results, stage, staged_path
from orchestrator.store import JobStore
from orchestrator.transports.local import LocalWorker
from orchestrator.verify import verify
from tests.conftest import submit_text, worker
from workers.task import PipelineCache, TaskOutput


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def output(value: int) -> TaskOutput:
    return TaskOutput(png=png(value), result={"total_s": 0.01, "backend": "fake"})


def local_worker(store: JobStore, out: Path, runner: Any, **kw: Any) -> LocalWorker:
    settings = WorkerSettings(output_dir=out, burst=True, poll_seconds=0.05, **kw)
    return LocalWorker(store, settings, cache=PipelineCache(), runner=runner)


def published(store: JobStore, job_id: int) -> bytes:
    job = store.get_job(job_id)
    assert job["status"] == "succeeded" and job["published_at"] is not None
    data = Path(job["output_path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == job["output_sha256"]
    return data


def test_a_worker_that_lost_its_job_never_touches_the_file(store: JobStore, tmp_path: Path) -> None:
    """Worker A is decoding when the user cancels and retries its job; worker B makes and
    publishes the image; then A finishes. A must neither overwrite B's file nor delete it."""
    submit_text(store, "prompt\na\n")
    out = tmp_path / "out"
    a_running, a_may_finish = threading.Event(), threading.Event()

    def slow_a(job: dict[str, Any], _c: PipelineCache, _stop: Callable[[], bool]) -> TaskOutput:
        a_running.set()
        assert a_may_finish.wait(30)
        return output(1)  # A's pixels differ from B's

    a = local_worker(store, out, slow_a, max_jobs=1)
    thread = threading.Thread(target=a.run)
    thread.start()
    assert a_running.wait(30)
    store.cancel([1])
    store.retry([1])
    b = local_worker(store, out, lambda job, c, s: output(2), max_jobs=1)
    assert b.run().succeeded == 1
    assert published(store, 1) == png(2)
    a_may_finish.set()
    thread.join(30)
    assert published(store, 1) == png(2)  # still B's bytes
    job = store.get_job(1)
    assert [(x["number"], x["status"]) for x in job["attempt_rows"]] == [
        (1, "cancelled"),
        (2, "succeeded"),
    ]
    assert not list((out / STAGING).iterdir())  # A's staged bytes went too
    assert verify(store, out).clean


def test_a_crash_between_commit_and_publish_is_recovered(store: JobStore, tmp_path: Path) -> None:
    submit_text(store, "prompt\na\n")
    out = tmp_path / "out"
    results = Results(store, out)
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    staged = stage(results.final_path(claim.job), claim.attempt_id, png(5))
    assert store.complete(claim, str(results.final_path(claim.job)), staged.sha256, {})
    # ... killed here: committed, not published
    report = verify(store, out)
    assert report.unpublished == [1] and not report.clean
    assert results.recover() == 1
    assert published(store, 1) == png(5)
    assert verify(store, out).clean


def test_a_crash_between_stage_and_commit_leaves_nothing(store: JobStore, tmp_path: Path) -> None:
    submit_text(store, "prompt\na\n", max_attempts=1)
    out = tmp_path / "out"
    results = Results(store, out)
    claim = store.claim(worker(), lease_seconds=0.05)
    assert claim is not None
    staged = stage(results.final_path(claim.job), claim.attempt_id, png(5))
    time.sleep(0.1)  # ... killed here; its lease runs out
    store.recover_expired()
    assert store.get_job(1)["status"] == "failed"  # its last attempt: no PNG, no success
    assert staged.path.exists()
    assert verify(store, out).staged == 1
    assert results.sweep() == {"staged": 1, "tmp": 0}
    assert not list(out.rglob("*.png"))
    assert verify(store, out).clean


def test_staged_bytes_lost_before_publishing_put_the_job_back(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    out = tmp_path / "out"
    results = Results(store, out)
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    staged = stage(results.final_path(claim.job), claim.attempt_id, png(5))
    store.complete(claim, str(results.final_path(claim.job)), staged.sha256, {})
    staged.path.unlink()
    results.recover()
    job = store.get_job(1)
    assert job["status"] == "pending" and "lost before publishing" in job["last_error"]
    assert job["attempt_rows"][0]["status"] == "lost"


def test_temporary_files_of_dead_writers_are_swept(store: JobStore, tmp_path: Path) -> None:
    out = tmp_path / "out"
    folder = out / STAGING
    folder.mkdir(parents=True)
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    (folder / f"7.{host}.{dead.pid}.abcd1234.tmp").write_bytes(b"half")
    alive = folder / f"8.{host}.{os.getpid()}.abcd1234.tmp"
    alive.write_bytes(b"being written")
    assert Results(store, out).sweep()["tmp"] == 1
    assert [p.name for p in folder.iterdir()] == [alive.name]


def test_a_temporary_file_left_when_the_folder_turned_read_only_is_swept_by_its_writer(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder turns read-only between creating the temporary file and renaming it: the
    write fails, and so does removing the file. Its writer is alive (this process), so only
    its own record of the file lets its next sweep remove it (chaos seed 37 found one left)."""
    from contract.errors import OutputUnwritable

    out = tmp_path / "out"
    real_unlink = os.unlink

    def read_only(*args: object, **kw: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", read_only)
        m.setattr(os, "unlink", read_only)
        with pytest.raises(OutputUnwritable):
            stage(out / "1" / "a.png", 3, png(1), root=out)
    (left,) = (out / STAGING).iterdir()
    assert left.name.startswith(f"3.{socket.gethostname()}.{os.getpid()}.")
    other = out / STAGING / f"4.{socket.gethostname()}.{os.getpid()}.abcd1234.tmp"
    other.write_bytes(b"being written by another thread")  # alive: never swept
    assert os.unlink is real_unlink
    assert Results(store, out).sweep() == {"staged": 0, "tmp": 1}
    assert [p.name for p in (out / STAGING).iterdir()] == [other.name]
    assert Results(store, out).sweep() == {"staged": 0, "tmp": 0}


def test_a_full_disk_pauses_the_worker_and_keeps_its_image(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator.results as results_module

    submit_text(store, "prompt,num_images\na,2\n")
    out = tmp_path / "out"
    real_stage = results_module.stage
    full = {"n": 3}

    def stage_on_full_disk(*a: Any, **kw: Any) -> Any:
        if full["n"] > 0:
            full["n"] -= 1
            raise DiskFull("no room to write (test)")
        return real_stage(*a, **kw)

    monkeypatch.setattr(results_module, "stage", stage_on_full_disk)
    calls = []

    def runner(job: dict[str, Any], _c: PipelineCache, _s: Callable[[], bool]) -> TaskOutput:
        calls.append(job["id"])
        return output(job["id"])

    w = local_worker(store, out, runner, pause_seconds=0.05)
    states: list[str | None] = []
    original = w._report

    def report(state: str, current_job: int | None = None) -> None:
        states.append(state)
        original(state, current_job)

    w._report = report  # type: ignore[method-assign]
    assert w.run().succeeded == 2
    assert calls == [1, 2]  # the image was kept, not generated again
    assert "paused" in states
    assert published(store, 1) == png(1) and published(store, 2) == png(2)
    assert verify(store, out).clean


def test_verify_finds_and_repairs_missing_damaged_and_orphan_files(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, "prompt,num_images\na,4\n")
    store.cancel([4])
    out = tmp_path / "out"
    assert local_worker(store, out, lambda j, c, s: output(j["id"])).run().succeeded == 3
    assert verify(store, out).clean
    Path(store.get_job(1)["output_path"]).unlink()
    Path(store.get_job(2)["output_path"]).write_bytes(b"not the image")
    (out / "1" / "000004.png").write_bytes(png(4))  # where cancelled job 4 would publish
    (out / "1" / "000099.png").write_bytes(png(9))  # no job 99: not provably ours
    report = verify(store, out)
    assert [r["id"] for r in report.missing] == [1]
    assert [r["id"] for r in report.corrupt] == [2]
    assert report.orphans == [str(out / "1" / "000004.png")]
    assert report.other_files == [str(out / "1" / "000099.png")]
    repaired = verify(store, out, repair=True)
    assert repaired.clean, repaired.lines()
    assert store.get_job(1)["status"] == "pending" and store.get_job(2)["status"] == "pending"
    # Nothing deleted: the orphan and the damaged image are moved aside; the foreign file stays.
    assert not (out / "1" / "000004.png").exists()
    assert repaired.moved_to is not None
    aside = Path(repaired.moved_to)
    assert (aside / "1" / "000004.png").read_bytes() == png(4)
    assert (aside / "1" / "000002.png").read_bytes() == b"not the image"
    assert (out / "1" / "000099.png").read_bytes() == png(9)
    local_worker(store, out, lambda j, c, s: output(j["id"])).run()
    assert published(store, 2) == png(2)
    assert [a["status"] for a in store.get_job(2)["attempt_rows"]] == ["lost", "succeeded"]
    assert verify(store, out).clean


def test_staged_path_is_beside_the_batches(tmp_path: Path) -> None:
    final = tmp_path / "out" / "3" / "000007.png"
    assert staged_path(final, 12) == tmp_path / "out" / STAGING / "12.png"
    assert staged_path(final, 12, writer="ab12") == tmp_path / "out" / STAGING / "12.ab12.png"


def test_a_rows_nested_folder_stages_in_the_one_staging_folder(
    store: JobStore, tmp_path: Path
) -> None:
    """``output_dir = a/b/c``: staged under ``<out>/.staging`` (which sweep and verify look
    at), never in a hidden folder among the user's own."""
    submit_text(store, "prompt,output_dir\nx,a/b/c\n")
    out = tmp_path / "out"
    final = out / "a" / "b" / "c" / "000001.png"
    assert staged_path(final, 12, out) == out / STAGING / "12.png"
    stats = local_worker(store, out, lambda job, _c, _s: output(3)).run()
    assert stats.succeeded == 1
    assert published(store, 1) == png(3) and Path(store.get_job(1)["output_path"]) == final
    assert not [p for p in out.rglob(".*") if p.parent != out]
    assert verify(store, out).clean
