"""A folder that no process of this machine can write into, root included, for as long as a
test (or a chaos round) needs: ``with unwritable(folder): ...``.

``chmod a-w`` is what a user meets, but root (as tests often run in containers) writes through
it; then ``chattr +i`` (an immutable folder: nobody, root included, adds, renames or removes an
entry); where neither holds (another filesystem, no CAP_LINUX_IMMUTABLE) the folder is moved
aside and a file put in its place, so making or entering it fails with ENOTDIR or EEXIST.
Each is checked by trying to write, so the block is real whichever way it was made."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

PROBE = ".unwritable-probe"


def writable(folder: Path) -> bool:
    """Whether a new file can be made in ``folder`` now (it is removed again)."""
    probe = folder / PROBE
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True


def _folders(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return [folder]
    return [folder, *sorted(p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink())]


def _by_chmod(folders: list[Path]) -> Callable[[], None] | None:
    modes = {f: f.stat().st_mode & 0o7777 for f in folders}
    for f, mode in modes.items():
        f.chmod(mode & ~0o222)

    def undo() -> None:
        for f, mode in modes.items():
            with suppress(FileNotFoundError):
                f.chmod(mode)

    if not writable(folders[0]):
        return undo
    undo()
    return None


def _chattr(flag: str, folders: list[Path]) -> bool:
    if shutil.which("chattr") is None:
        return False
    proc = subprocess.run(
        ["chattr", flag, *map(str, folders)], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


def _by_chattr(folders: list[Path]) -> Callable[[], None] | None:
    def undo() -> None:
        _chattr("-i", folders)

    if _chattr("+i", folders) and not writable(folders[0]):
        return undo
    undo()
    return None


def _merge(src: Path, dst: Path) -> None:
    """Move what ``src`` holds into ``dst`` (a process made ``src`` again meanwhile)."""
    for entry in list(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            _merge(entry, target)
        else:
            os.replace(entry, target)
    src.rmdir()


def _by_a_file(folder: Path) -> Callable[[], None]:
    aside = folder.with_name(folder.name + ".aside")
    os.rename(folder, aside)
    while True:
        try:
            os.close(os.open(folder, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
            break
        except FileExistsError:  # a writer made the folder again in between
            _merge(folder, aside)

    def undo() -> None:
        folder.unlink()
        try:
            os.rename(aside, folder)
        except OSError:  # made again in between, and written to
            _merge(folder, aside)
            os.rename(aside, folder)

    return undo


@contextmanager
def unwritable(folder: Path, *, recursive: bool = False) -> Iterator[str]:
    """``folder`` (with ``recursive``, every folder under it too) cannot be written into while
    the block lasts; yields how it was done."""
    folder.mkdir(parents=True, exist_ok=True)
    folders = _folders(folder, recursive)
    undo = _by_chmod(folders)
    how = "chmod a-w"
    if undo is None:
        undo, how = _by_chattr(folders), "chattr +i"
    if undo is None:
        undo, how = _by_a_file(folder), "a file in its place"
    try:
        yield how
    finally:
        undo()
