from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.output import image_path, write_atomic

JOB = {
    "id": 17,
    "batch_id": 3,
    "seed": 42,
    "image_index": 1,
    "line": 5,
    "steps": 20,
    "scheduler": "dpmpp_2m",
    "width": 64,
    "height": 64,
    "output_name": "",
}


def test_images_are_named_by_job(tmp_path: Path) -> None:
    assert image_path(tmp_path, JOB) == tmp_path / "3" / "000017.png"


def test_output_name_template_adds_a_readable_suffix(tmp_path: Path) -> None:
    job = {**JOB, "output_name": "fox-{seed}-{index}"}
    assert image_path(tmp_path, job) == tmp_path / "3" / "000017-fox-42-1.png"


def test_a_hand_edited_name_still_cannot_leave_the_output_dir(tmp_path: Path) -> None:
    job = {**JOB, "output_name": "../../etc/passwd"}
    path = image_path(tmp_path, job)
    assert path.parent == tmp_path / "3"
    assert path.name == "000017-_.._etc_passwd.png"


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "x.png"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_atomic_failure_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.png"
    write_atomic(target, b"old")

    def boom(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("orchestrator.output.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_a_row_folder_holds_its_images_under_the_output_dir(tmp_path: Path) -> None:
    job = {**JOB, "output_dir": "portraits/{scheduler}-{steps}", "output_name": "{seed}"}
    assert image_path(tmp_path, job) == tmp_path / "portraits" / "dpmpp_2m-20" / "000017-42.png"


@pytest.mark.parametrize("folder", ["../../etc", "/etc", "a/../../b", "..", "./.hidden/x"])
def test_a_hand_edited_folder_still_cannot_leave_the_output_dir(
    tmp_path: Path, folder: str
) -> None:
    path = image_path(tmp_path, {**JOB, "output_dir": folder})
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert ".." not in path.relative_to(tmp_path).parts
