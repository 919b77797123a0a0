"""The morning after is safe: an output folder belongs to one database, files are compared by
identity, and nothing that repairs or exports deletes, overwrites or re-queues what it cannot
prove is its own (issue 31, items 1, 2, 5 and 6)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from contract.errors import UsageError
from orchestrator.cli import cli
from orchestrator.config import WorkerSettings
from orchestrator.database import database_url, open_engine
from orchestrator.export import export_dataset
from orchestrator.ownership import MARKER, FolderOwnedElsewhere, read_owner
from orchestrator.results import STAGING, Results, stage
from orchestrator.store import JobStore
from orchestrator.transports.local import LocalWorker
from orchestrator.verify import verify
from tests.conftest import submit_text, worker
from workers.task import PipelineCache, TaskOutput


def png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def work(store: JobStore, out: Path, value: Callable[[dict[str, Any]], int] | None = None) -> int:
    """Work the queue through with a fake pipeline; returns how many succeeded."""

    def runner(job: dict[str, Any], _c: PipelineCache, _s: Callable[[], bool]) -> TaskOutput:
        return TaskOutput(png=png(value(job) if value else job["id"]), result={"total_s": 0.01})

    settings = WorkerSettings(output_dir=out, burst=True, poll_seconds=0.05)
    return LocalWorker(store, settings, cache=PipelineCache(), runner=runner).run().succeeded


def open_store(path: Path) -> JobStore:
    return JobStore(open_engine(database_url(str(path))))


def images(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


# -- 1. identity, not path spelling ------------------------------------------------------------


def test_repair_through_a_symlinked_output_deletes_nothing(store: JobStore, tmp_path: Path) -> None:
    """Before: every image compared by path string was an orphan and was unlinked."""
    submit_text(store, "prompt,num_images\na,3\n")
    real = tmp_path / "srv" / "orchestrate"
    assert work(store, real) == 3
    link = tmp_path / "proj"
    link.symlink_to(real)
    before = images(real)

    report = verify(store, link)
    assert report.clean, report.lines()
    assert report.orphans == [] and report.outside == []
    repaired = verify(store, link, repair=True)
    assert repaired.clean and repaired.repaired == {}
    assert images(real) == before
    assert {store.get_job(i)["status"] for i in (1, 2, 3)} == {"succeeded"}


def test_images_recorded_through_a_symlink_verify_from_the_real_path(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, "prompt,num_images\na,2\n")
    real = tmp_path / "private" / "var" / "out"
    real.mkdir(parents=True)
    link = tmp_path / "var"
    link.symlink_to(tmp_path / "private" / "var")
    assert work(store, link / "out") == 2  # recorded as .../var/out/1/000001.png
    assert store.get_job(1)["output_path"].startswith(str(link))
    assert verify(store, real, repair=True).clean
    assert len(images(real)) == 2


def test_repair_refuses_a_folder_the_images_were_not_written_to(
    store: JobStore, tmp_path: Path
) -> None:
    """Before: with the recorded paths absent on this host, every job went back to pending."""
    submit_text(store, "prompt,num_images\na,3\n")
    there = tmp_path / "container" / "data" / "out"  # the coordinator's view
    assert work(store, there) == 3
    here = tmp_path / "host-volume"  # the same volume, seen from the host
    there.rename(here)
    report = verify(store, here)
    assert len(report.missing) == 3 and len(report.outside) == 3
    assert "3 of 3 succeeded jobs' images are recorded outside this output folder" in "\n".join(
        report.lines()
    )
    with pytest.raises(UsageError, match=r"3 of 3 succeeded jobs' images are recorded outside"):
        verify(store, here, repair=True)
    assert {store.get_job(i)["status"] for i in (1, 2, 3)} == {"succeeded"}
    assert len(images(here)) == 3


def test_repair_refuses_a_folder_that_holds_none_of_the_images_and_records_no_owner(
    store: JobStore, tmp_path: Path
) -> None:
    """A drive that is not mounted: the folder is there, empty, and not marked as ours."""
    submit_text(store, "prompt,num_images\na,2\n")
    out = tmp_path / "mnt" / "images"
    assert work(store, out) == 2
    for p in list(out.rglob("*")):
        if p.is_file():
            p.unlink()  # what an unmounted automount looks like: nothing there
    with pytest.raises(UsageError, match="holds none of the 2 succeeded jobs' images"):
        verify(store, out, repair=True)
    assert {store.get_job(i)["status"] for i in (1, 2)} == {"succeeded"}
    # The user says it is the right folder: it is adopted and every image is made again.
    repaired = verify(store, out, repair=True, adopt=True)
    assert repaired.repaired["jobs with a missing or damaged image put back to pending"] == 2
    assert read_owner(out) is not None and read_owner(out).uid == store.identify_owner().uid  # type: ignore[union-attr]


def test_a_folder_with_our_marker_and_no_images_is_made_again(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, "prompt\na\n")
    out = tmp_path / "out"
    assert work(store, out) == 1
    Path(store.get_job(1)["output_path"]).unlink()
    repaired = verify(store, out, repair=True)
    assert repaired.clean and store.get_job(1)["status"] == "pending"


# -- 2. one database per folder ----------------------------------------------------------------


def test_two_databases_never_share_an_output_folder(tmp_path: Path) -> None:
    """Before: job 1 of the second database silently replaced job 1 of the first."""
    out = tmp_path / "output"
    trial = open_store(tmp_path / "trial.db")
    submit_text(trial, "prompt\nfirst\n")
    assert work(trial, out, lambda j: 11) == 1
    first = images(out)
    assert json.loads((out / MARKER).read_text())["uid"] == trial.identify_owner().uid

    main_db = open_store(tmp_path / "orchestrate.db")
    submit_text(main_db, "prompt\nsecond\n")
    with pytest.raises(FolderOwnedElsewhere) as caught:
        Results(main_db, out).claim_folder()
    message = str(caught.value)
    assert str(tmp_path / "trial.db") in message and str(tmp_path / "orchestrate.db") in message
    # A worker given that folder refuses before it takes a job.
    with pytest.raises(FolderOwnedElsewhere):
        work(main_db, out, lambda j: 22)
    assert main_db.get_job(1)["status"] == "pending"
    assert images(out) == first
    with pytest.raises(FolderOwnedElsewhere):
        verify(main_db, out, repair=True)
    assert images(out) == first
    # The owner still verifies clean; an export of images in the other's folder is refused.
    assert verify(trial, out).clean
    _succeeded_in(main_db, out, tmp_path)
    with pytest.raises(FolderOwnedElsewhere):
        export_dataset(main_db, tmp_path / "ds", "imagefolder")


def _succeeded_in(store: JobStore, owned_by_other: Path, tmp_path: Path) -> None:
    """Make ``store``'s job 1 succeeded with an image recorded inside another database's
    folder (as an older version that did not check ownership would have left it)."""
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    final = owned_by_other / "1" / "000001.png"
    staged = stage(final, claim.attempt_id, final.read_bytes(), tmp_path / "elsewhere")
    assert store.complete(claim, str(final), staged.sha256, {})
    store.mark_published(1, staged.sha256)


def test_run_into_another_databases_folder_is_refused_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--db trial.db run small.csv`, then `run jobs.csv` (or orchestrate.db deleted to start
    over): refused in one sentence naming both, before a database is made or a job submitted."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "output"
    trial = open_store(tmp_path / "trial.db")
    submit_text(trial, "prompt\nfirst\n")
    assert work(trial, out) == 1
    (tmp_path / "jobs.csv").write_text("prompt\nsecond\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        cli(["--output", str(out), "run", "jobs.csv", "--skip-model-check"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"the output folder {out} belongs to the database {tmp_path / 'trial.db'}" in err
    assert f"the new database {tmp_path / 'orchestrate.db'}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "orchestrate.db").exists()


def test_two_processes_claiming_a_new_folder_agree_on_one_owner(tmp_path: Path) -> None:
    a, b = open_store(tmp_path / "a.db"), open_store(tmp_path / "b.db")
    out = tmp_path / "out"
    Results(a, out).claim_folder()
    Results(a, out).claim_folder()  # again: fine
    with pytest.raises(FolderOwnedElsewhere):
        Results(b, out).claim_folder()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# -- 5. the user's own files, and staged files found where they were written ------------------


def test_a_reproduce_compare_copy_is_left_alone(store: JobStore, tmp_path: Path) -> None:
    """Before: `verify` failed on `<name>.reproduced.png` and `--repair` deleted it."""
    from orchestrator.reproduce import reproduced_path

    submit_text(store, "prompt,output_name\na,fox-{seed}\n")
    out = tmp_path / "out"
    assert work(store, out) == 1
    image = Path(store.get_job(1)["output_path"])
    copy = reproduced_path(image)
    copy.write_bytes(png(99))
    notes = image.parent / "000001-mine.png"  # named like ours, but no job publishes there
    notes.write_bytes(png(98))
    report = verify(store, out)
    assert report.clean, report.lines()
    assert str(notes) in report.other_files
    repaired = verify(store, out, repair=True)
    assert repaired.clean
    assert copy.read_bytes() == png(99) and notes.read_bytes() == png(98)


def test_recovery_publishes_the_staged_file_its_commit_recorded(
    store: JobStore, tmp_path: Path
) -> None:
    """A worker given one output folder (a nested output_dir template) commits and dies; the
    repair runs with another spelling of the folder. Before: recovery looked for the staged
    file under its own folder, threw the committed result away and counted it published."""
    submit_text(store, "prompt,output_dir\na,runs/{seed}/deep\n")
    real = tmp_path / "real-out"
    results = Results(store, real)
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    final = results.final_path(claim.job)
    assert final.parent.parent.parent.parent == real  # runs/<seed>/deep
    results.claim_folder()  # as Delivery does before its first byte
    staged = stage(final, claim.attempt_id, png(5), real, results.writer)
    assert store.complete(claim, str(final), staged.sha256, {}, staged_path=str(staged.path))
    # ... killed here: committed, not published. The repair names the folder through a link.
    link = tmp_path / "link-out"
    link.symlink_to(real)
    repaired = verify(store, link, repair=True)
    assert repaired.repaired == {"unpublished results published": 1}
    assert repaired.clean
    job = store.get_job(1)
    assert job["status"] == "succeeded" and Path(job["output_path"]).read_bytes() == png(5)
    assert [a["status"] for a in job["attempt_rows"]] == ["succeeded"]


def test_two_writers_of_one_attempt_never_share_a_staged_file(
    store: JobStore, tmp_path: Path
) -> None:
    """Two coordinators handling the same result (one taken over while slow) each stage their
    own copy; the one whose commit lands publishes, the other removes only its own."""
    submit_text(store, "prompt\na\n")
    out = tmp_path / "out"
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    old, new = Results(store, out), Results(store, out)
    slow = old.delivery(claim, png(7), {})
    fast = new.delivery(claim, png(7), {})
    slow.staged = stage(slow.final, claim.attempt_id, png(7), out, old.writer)
    assert fast.advance() is True
    assert slow.staged.path.exists() and slow.staged.path != fast.staged.path  # type: ignore[union-attr]
    assert slow.advance() is False  # superseded: its own copy goes, the image stays
    assert not slow.staged.path.exists()
    job = store.get_job(1)
    assert Path(job["output_path"]).read_bytes() == png(7)
    assert list((out / STAGING).iterdir()) == []
    assert verify(store, out).clean


def test_sweep_keeps_only_the_committed_copy(store: JobStore, tmp_path: Path) -> None:
    submit_text(store, "prompt\na\n")
    out = tmp_path / "out"
    a, b = Results(store, out), Results(store, out)
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    final = a.final_path(claim.job)
    mine = stage(final, claim.attempt_id, png(1), out, a.writer)
    theirs = stage(final, claim.attempt_id, png(1), out, b.writer)
    assert a.sweep(dry_run=True) == {"staged": 0, "tmp": 0}  # open attempt: both may publish
    assert store.complete(claim, str(final), mine.sha256, {}, staged_path=str(mine.path))
    assert a.sweep() == {"staged": 1, "tmp": 0}
    assert mine.path.exists() and not theirs.path.exists()
    assert a.recover() == 1
    assert final.read_bytes() == png(1)


# -- 6. export ---------------------------------------------------------------------------------


def test_a_regenerated_image_of_equal_size_is_exported_again(
    store: JobStore, tmp_path: Path
) -> None:
    """Before: same size meant "already there", so the old pixels stayed in the dataset."""
    submit_text(store, "prompt\na\n")
    out = tmp_path / "out"
    assert work(store, out, lambda j: 1) == 1
    export_dataset(store, tmp_path / "ds", "imagefolder")
    exported = tmp_path / "ds" / "train" / "000001.png"
    assert exported.read_bytes() == png(1)
    # The image is made again (verify found it damaged, say): same size, other pixels.
    Path(store.get_job(1)["output_path"]).write_bytes(b"x" * len(png(1)))
    verify(store, out, repair=True)
    other = next(v for v in range(2, 256) if len(png(v)) == len(png(1)))
    assert work(store, out, lambda j: other) == 1
    again = export_dataset(store, tmp_path / "ds", "imagefolder")
    assert again.copied == 1
    assert exported.read_bytes() == png(other)


def test_an_export_during_a_live_run_leaves_out_what_is_being_published(
    store: JobStore, tmp_path: Path
) -> None:
    """Before: refused, saying a process had been stopped mid-publish."""
    submit_text(store, "prompt,num_images\na,2\n")
    out = tmp_path / "out"
    assert work(store, out) == 2
    submit_text(store, "prompt\nb\n")
    results = Results(store, out)
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    staged = stage(results.final_path(claim.job), claim.attempt_id, png(3), out, results.writer)
    assert store.complete(
        claim, str(results.final_path(claim.job)), staged.sha256, {}, staged_path=str(staged.path)
    )
    result = export_dataset(store, tmp_path / "ds", "imagefolder")
    assert (result.rows, result.in_flight) == (2, 1)
    assert "left out: 1 succeeded image not in place yet" in result.summary()
    assert "stopped" not in result.summary()


def test_imagefolder_keeps_the_manifests_output_name(store: JobStore, tmp_path: Path) -> None:
    submit_text(store, "prompt,output_name\na,fox-{seed}\n")
    out = tmp_path / "out"
    assert work(store, out) == 1
    name = Path(store.get_job(1)["output_path"]).name
    assert name.startswith("000001-fox-")
    result = export_dataset(store, tmp_path / "ds", "imagefolder")
    folder = result.location
    assert (folder / name).is_file()
    meta = json.loads((folder / "metadata.jsonl").read_text(encoding="utf-8"))
    assert meta["file_name"] == name
    # Exported again with no output_name any more: the old name is removed as stale.
    os.rename(folder / name, folder / "000001-old.png")
    export_dataset(store, tmp_path / "ds", "imagefolder")
    assert sorted(p.name for p in folder.iterdir()) == [name, "metadata.jsonl"]
