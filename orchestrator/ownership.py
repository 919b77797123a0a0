"""Which database an output folder belongs to.

Image paths are ``<out>/<batch>/<job-id>.png`` and both ids restart at 1 in a new database, so
two databases writing one folder would overwrite each other's images, and repairing either
would delete or re-queue the other's. To make that impossible, the first database to publish
into a folder writes its id there (``<out>/.orchestrate-owner.json``); publishing into,
repairing or exporting from a folder that records another database's id is refused, naming
both. The marker is created whole or not at all (a hard link of a finished file; ``O_EXCL``
where the filesystem has no hard links), so two processes claiming a new folder at once agree
on one owner.

A folder is named by its marker, never by how its path is spelled: a symlinked ``--output``
and the folder it points to are the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from contract.errors import UsageError

MARKER = ".orchestrate-owner.json"


@dataclass(frozen=True)
class Owner:
    """The database an output folder belongs to: its id, and where it was when it claimed
    the folder (for the user: a database may have moved since)."""

    uid: str
    database: str
    claimed_at: float

    def describe(self) -> str:
        if not self.uid:
            return f"the new database {self.database}"
        return f"the database {self.database} (id {self.uid[:8]})"


class FolderOwnedElsewhere(UsageError):
    """The output folder belongs to another job database."""


class DamagedMarker(UsageError):
    """An output folder's owner marker cannot be read."""


def read_owner(folder: Path) -> Owner | None:
    """The owner recorded in ``folder``, or None when it records none."""
    path = Path(folder) / MARKER
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    try:
        data = json.loads(raw)
        return Owner(str(data["uid"]), str(data["database"]), float(data["claimed_at"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise DamagedMarker(
            f"{path} does not say which database owns this output folder ({exc}); if you know "
            "it is this database's, delete that file and try again"
        ) from exc


def refuse(folder: Path, owner: Owner, mine: Owner) -> FolderOwnedElsewhere:
    """The one sentence for a folder that another database owns."""
    return FolderOwnedElsewhere(
        f"the output folder {folder} belongs to {owner.describe()}, not to "
        f"{mine.describe()}: give this database its own folder (--output), or use that "
        f"database (--db {owner.database}); if that database is gone for good, move the "
        "folder aside first"
    )


def claim(folder: Path, mine: Owner) -> None:
    """Make ``folder`` (and its parents) if missing and record ``mine`` as its owner, unless
    it has one already: then it must be ``mine``, or FolderOwnedElsewhere is raised. OSError
    (a folder that cannot be written) is the caller's to handle."""
    folder = Path(folder)
    owner = read_owner(folder)
    if owner is None:
        folder.mkdir(parents=True, exist_ok=True)
        owner = _create(folder, mine)
    if owner.uid != mine.uid:
        raise refuse(folder, owner, mine)


def check(folder: Path, mine: Owner) -> Owner | None:
    """Raise FolderOwnedElsewhere when ``folder`` belongs to another database; return its
    owner (None: nobody has claimed it)."""
    owner = read_owner(folder)
    if owner is not None and owner.uid != mine.uid:
        raise refuse(Path(folder), owner, mine)
    return owner


def owner_above(
    path: Path, cache: dict[Path, tuple[Path, Owner] | None]
) -> tuple[Path, Owner] | None:
    """The nearest folder above ``path`` that records an owner, and that owner (a row's
    ``output_dir`` may nest an image several folders below the marker)."""
    seen: list[Path] = []
    found: tuple[Path, Owner] | None = None
    for folder in Path(path).parents:
        if folder in cache:
            found = cache[folder]
            break
        seen.append(folder)
        owner = read_owner(folder)
        if owner is not None:
            found = (folder, owner)
            break
    for folder in seen:
        cache[folder] = found
    return found


def _create(folder: Path, mine: Owner) -> Owner:
    """Write the marker unless another process got there first; return whichever won."""
    data = json.dumps(
        {"uid": mine.uid, "database": mine.database, "claimed_at": time.time()},
        indent=2,
        sort_keys=True,
    ).encode("utf-8")
    target = folder / MARKER
    tmp = folder / f".{MARKER}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            _create_exclusive(target, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    owner = read_owner(folder)
    assert owner is not None
    return owner


def _create_exclusive(target: Path, data: bytes) -> None:
    """For filesystems without hard links: create the marker itself exclusively."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as fh:
        fh.write(data + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
