"""Where ``orchestrate generate`` puts its image, and that it is there whole or not at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from contract.errors import DiskFull, UsageError
from orchestrator.generate import Target, resolve_target, slug, write_image
from orchestrator.manifest import Defaults

JOB = {"seed": 42, "prompt": "A red fox, in the snow"}


def test_slug_is_short_safe_ascii() -> None:
    assert slug("A red fox, in the snow") == "a-red-fox-in-the-snow"
    assert slug("Café — naïve: ½ 東京") == "cafe-naive-12"
    assert slug("東京") == "image"
    assert slug("word " * 40) == "-".join(["word"] * 12)
    assert slug("x" * 100) == "x" * 60


def test_what_o_means(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_target(None, False) == Target(tmp_path, is_file=False, overwrite=False)
    assert resolve_target("pics/a.PNG", False).is_file
    assert not resolve_target("pics/v1.5", False).is_file  # a folder, made when written
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(UsageError, match="already exists; --overwrite replaces it"):
        resolve_target("a.png", False)
    assert resolve_target("a.png", True).is_file
    (tmp_path / "dir.png").mkdir()
    assert not resolve_target("dir.png", False).is_file  # an existing folder stays a folder
    with pytest.raises(UsageError, match="PNG only"):
        resolve_target("a.webp", False)
    (tmp_path / "notes").write_text("x")
    with pytest.raises(UsageError, match=r"is a file; name a \.png file or a folder"):
        resolve_target("notes", False)


def test_a_folder_gets_a_new_name_rather_than_replacing(tmp_path: Path) -> None:
    (tmp_path / "42-a-red-fox-in-the-snow.png").write_bytes(b"one")
    (tmp_path / "42-a-red-fox-in-the-snow-2.png").write_bytes(b"two")
    path = write_image(Target(tmp_path, is_file=False, overwrite=False), JOB, b"png")
    assert path == tmp_path / "42-a-red-fox-in-the-snow-3.png" and path.read_bytes() == b"png"
    assert (tmp_path / "42-a-red-fox-in-the-snow.png").read_bytes() == b"one"
    again = write_image(Target(tmp_path, is_file=False, overwrite=True), JOB, b"new")
    assert again == tmp_path / "42-a-red-fox-in-the-snow.png" and again.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_exact_file_appearing_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    target = resolve_target(str(tmp_path / "out" / "pic.png"), False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "pic.png").write_bytes(b"theirs")  # made while we generated
    with pytest.raises(UsageError, match="already exists"):
        write_image(target, JOB, b"png")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pic.png"]
    assert (tmp_path / "out" / "pic.png").read_bytes() == b"theirs"


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull, match="no space left"):
        write_image(Target(tmp_path / "pic.png", is_file=True, overwrite=False), JOB, b"png")
    assert list(tmp_path.iterdir()) == []


def test_bad_values_are_one_line(tmp_path: Path) -> None:
    from orchestrator.generate import one_job

    with pytest.raises(UsageError, match=r"^the prompt is empty$"):
        one_job(" ", Defaults())
    with pytest.raises(UsageError, match=r"^--height must be a multiple of 8 \(got 100\)$"):
        one_job("x", Defaults(height=100))
    job = one_job("x", Defaults(), seed=3)
    assert job["seed"] == 3 and job["model"] == "tiny" and (job["width"], job["height"]) == (64, 64)
