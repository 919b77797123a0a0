"""The one path from a finished image to its published file, for both transports.

A job's image is published by the attempt whose success the database recorded, and by nothing
else. The lease owner's token fences the file as well as the row:

1. **stage**: the bytes go to ``<out>/.staging/<attempt-id>.<writer>.png``, a name only this
   writer of this attempt writes (two coordinators handling the same result each stage their
   own copy), via a temporary name carrying the writer's host and pid, fsync, rename, fsync
   of the folder. The final path is not touched.
2. **commit**: ``store.complete`` makes the job succeeded and records the image's sha256 and
   its staged file, only while this attempt's lease owner still holds the job. If it does not (the lease was
   lost, the job cancelled, retried or finished by another), the staged file is removed and
   that is all: a superseded, cancelled or late attempt never creates, replaces or deletes
   the published file.
3. **publish**: the staged file is renamed over ``<out>/<batch>/<job-id>.png`` (atomic,
   same folder tree), the folder fsynced, and ``published_at`` set.

A process killed between 2 and 3 leaves a succeeded job with ``published_at`` NULL and its
staged file: ``recover`` (run by every worker and coordinator at start, by the coordinator on
every tick, by ``verify --repair``) publishes the file the commit recorded, or, if the staged
bytes are gone, puts the job back to pending. ``sweep`` removes staged files of attempts that
can no longer publish, the other copies of a committed one, and the temporary files of
writers that died.

Before its first image a ``Results`` claims its output folder for its database
(``orchestrator.ownership``): a folder another database owns is never written.

Errors are sorted by whom they hold up:

- a full disk (or a file-size limit) raises ``DiskFull``, and a staging folder that cannot be
  written into (no permission, a read-only disk, a file where the folder should be) raises
  ``OutputUnwritable``: every image of this output folder would fail alike, so the caller keeps
  its bytes, takes no new work and tries again later; nothing half-written stays behind;
- any other OS error while publishing one job's image (its folder cannot be made or written,
  a folder where the image goes, a name too long, another filesystem) is that job's state: the
  job stays succeeded with ``published_at`` NULL and its staged bytes kept, ``last_error`` says
  why and ``not_before`` when publishing is tried again (backoff from the commit, 2 s up to
  5 min), and ``PublishBlocked`` is raised; ``recover`` skips it until then, and the other
  jobs go on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import faults
from contract.errors import (
    DiskFull,
    OrchestratorError,
    OutputUnwritable,
    PublishBlocked,
    describe_os_error,
    is_no_space,
)
from orchestrator.output import image_path
from orchestrator.ownership import claim as claim_folder
from orchestrator.store.base import process_gone

logger = logging.getLogger(__name__)

STAGING = ".staging"
TMP_STALE_S = 24 * 3600.0  # a temporary file this old is dead whoever wrote it
# <attempt>.<writer>.png; <attempt>.png from before writers had their own names
_STAGED = re.compile(r"^(\d+)(?:\.[0-9a-f]+)?\.png$")
_TMP = re.compile(r"^\d+\.(?P<host>.+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")
_HOST = socket.gethostname()
# This process's own temporary files that it could not remove when a write failed (the folder
# turned read-only between creating one and removing it): by name, which holds this host, this
# pid and a random token. Its writer is alive (it is us), so only this record lets a sweep
# prove the file is dead; each sweep of this process removes them.
_left_behind: set[str] = set()
_left_lock = threading.Lock()
_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = ["Results", "StagedImage", "image_path", "staged_path"]


class ImageMismatch(OrchestratorError):
    """The bytes received are not the image their sender announced."""


@dataclass(frozen=True)
class StagedImage:
    path: Path
    sha256: str
    size: int


def staged_path(
    final: Path, attempt_id: int, root: Path | None = None, writer: str | None = None
) -> Path:
    """``<out>/.staging/<attempt-id>.<writer>.png``: one hidden folder beside the batches, on
    the same filesystem, so publishing is a rename. ``<out>`` is ``root`` when the final path
    is under it (a row's ``output_dir`` may nest the image deeper), else the folder above the
    image's. Without ``writer``, the name attempts had before writers had their own (what
    recovery guesses for a commit that recorded no staged file)."""
    name = f"{int(attempt_id)}.{writer}.png" if writer else f"{int(attempt_id)}.png"
    if root is not None and final.is_relative_to(root):
        return root / STAGING / name
    return final.parent.parent / STAGING / name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stage(
    final: Path,
    attempt_id: int,
    data: bytes | Iterable[bytes],
    root: Path | None = None,
    writer: str | None = None,
) -> StagedImage:
    """Write an attempt's image under its writer's own staged name, whole or not at all.
    ``data`` may be an iterable of chunks (the coordinator streams from Redis). Raises
    DiskFull, or OutputUnwritable for any other OS error (the staging folder is every job's)."""
    target = staged_path(final, attempt_id, root, writer)
    tmp = target.with_name(f"{int(attempt_id)}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    h = hashlib.sha256()
    size = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            for chunk in [data] if isinstance(data, bytes | bytearray) else data:
                fh.write(chunk)
                h.update(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        faults.point("results.before_rename")
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            with _left_lock:
                _left_behind.add(tmp.name)
        if isinstance(exc, OSError) and is_no_space(exc):
            raise DiskFull(f"no room to write {target}: {exc.strerror}") from exc
        if isinstance(exc, OSError):
            # The folder, not the temporary name: one message for as long as the state lasts.
            raise OutputUnwritable(
                f"cannot write into {target.parent}: {describe_os_error(exc, paths=False)}"
            ) from exc
        raise
    return StagedImage(target, h.hexdigest(), size)


class Results:
    """Stage, commit and publish images for one output folder, against one store."""

    def __init__(self, store: Any, output_dir: Path) -> None:
        self.store = store
        self.output_dir = Path(output_dir)
        # This writer's staged files: unique per Results, so two processes handling the same
        # attempt (a coordinator taken over while slow) never share one.
        self.writer = secrets.token_hex(4)
        self._claimed = False

    def claim_folder(self) -> None:
        """Record this database as the output folder's owner (once per Results); raises
        FolderOwnedElsewhere when another database owns it, DiskFull or OutputUnwritable
        (states to wait out, as for staging) when it cannot be written."""
        if self._claimed:
            return
        try:
            claim_folder(self.output_dir, self.store.identify_owner())
        except OSError as exc:
            if is_no_space(exc):
                raise DiskFull(f"no room to write into {self.output_dir}: {exc.strerror}") from exc
            raise OutputUnwritable(
                f"cannot write into {self.output_dir}: {describe_os_error(exc, paths=False)}"
            ) from exc
        self._claimed = True

    def final_path(self, job: dict[str, Any]) -> Path:
        return image_path(self.output_dir, job)

    def delivery(
        self,
        claim: Any,
        data: bytes | Iterable[bytes],
        result: dict[str, Any],
        *,
        expect_sha256: str | None = None,
    ) -> Delivery:
        """One attempt's image on its way: call ``advance()`` until it returns."""
        return Delivery(self, claim, data, result, expect_sha256=expect_sha256)

    def publish(self, job_id: int, staged: Path, final: Path, sha256: str) -> bool:
        """Move a committed attempt's staged file to the job's path and mark it published.
        Idempotent, and safe to race with ``recover``: both move the same bytes. Returns
        False when the bytes are gone (the job was put back to pending). Raises DiskFull, or
        PublishBlocked (recorded on the job) for any other OS error."""
        try:
            try:
                faults.point("results.publish")
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
            except FileNotFoundError:
                # Someone (recovery, or the writer itself) moved it first, or it is lost.
                if not (final.is_file() and sha256_file(final) == sha256):
                    self.store.mark_image_lost(
                        job_id, f"image {staged} lost before publishing", sha256=sha256
                    )
                    logger.error("job %s: its staged image is gone; back to pending", job_id)
                    return False
            _fsync_dir(final.parent)
        except OSError as exc:
            if is_no_space(exc):
                raise DiskFull(f"cannot publish {final}: {exc.strerror}") from exc
            raise self._blocked(job_id, sha256, final, exc) from exc
        self.store.mark_published(job_id, sha256)
        return True

    def _blocked(self, job_id: int, sha256: str, final: Path, exc: OSError) -> PublishBlocked:
        """Record on the job why its committed image cannot be put in place, and when that is
        tried again; the error to raise or report."""
        error = f"cannot publish {final}: {describe_os_error(exc)}"
        retry_at = self.store.mark_publish_failed(job_id, sha256, error)
        logger.warning(
            "job %s: %s (its image waits in %s; tried again in %.0fs)",
            job_id,
            error,
            self.output_dir / STAGING,
            max(0.0, (retry_at or time.time()) - time.time()),
            extra={"job_id": job_id, "action": "publish_blocked"},
        )
        return PublishBlocked(error)

    def recover(self, limit: int = 1000, *, backoff: bool = True) -> int:
        """Publish succeeded jobs whose publishing was cut short; put those whose image is
        gone back to pending. A job whose image cannot be published now is skipped (its error
        recorded); with ``backoff``, one that failed before is looked at only once its next
        try is due. Returns how many it looked at."""
        rows = self.store.list_unpublished(limit, due=time.time() if backoff else None)
        for row in rows:
            final = Path(row["output_path"])
            sha = row["output_sha256"]
            try:
                if final.is_file() and sha256_file(final) == sha:
                    self.store.mark_published(row["id"], sha)
                    continue
                # The file the commit recorded; a guess only for commits made before it was.
                staged = (
                    Path(row["staged_path"])
                    if row.get("staged_path")
                    else staged_path(final, row["attempt_id"] or 0, self.output_dir)
                )
                if staged.is_file() and sha256_file(staged) != sha:
                    self.store.mark_image_lost(
                        row["id"], f"staged image {staged} is corrupt", sha256=sha
                    )
                    continue
                if not self.publish(row["id"], staged, final, sha):
                    continue
            except PublishBlocked:
                continue  # recorded; the others go on
            except OSError as exc:  # reading the image or its staged bytes
                if is_no_space(exc):
                    raise DiskFull(f"cannot publish {final}: {exc.strerror}") from exc
                self._blocked(row["id"], sha, final, exc)
                continue
            logger.info(
                "job %s: published after an interruption",
                row["id"],
                extra={"job_id": row["id"], "action": "job_published_late"},
            )
        return len(rows)

    def sweep(self, *, now: float | None = None, dry_run: bool = False) -> dict[str, int]:
        """Remove staged files that can no longer be published (their attempt is closed and
        did not succeed, its job is published, or another writer's copy was committed) and
        temporary files of dead writers; with ``dry_run``, only count them."""
        removed = {"staged": 0, "tmp": 0}
        for kind, path in self._stale(time.time() if now is None else now):
            if dry_run or _unlink(path):
                removed[kind] += 1
                if not dry_run:
                    with _left_lock:
                        _left_behind.discard(path.name)
        return removed

    def _stale(self, now: float) -> list[tuple[str, Path]]:
        stale: list[tuple[str, Path]] = []
        staged: dict[int, list[Path]] = {}
        for folder in self._staging_folders():
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:  # unreadable now: swept another time
                logger.warning("cannot sweep %s: %s", folder, describe_os_error(exc))
                continue
            for entry in entries:
                m = _TMP.match(entry.name)
                if m is not None:
                    if entry.name in _left_behind or _writer_dead(
                        m["host"], int(m["pid"]), entry, now
                    ):
                        stale.append(("tmp", Path(entry.path)))
                    continue
                m = _STAGED.match(entry.name)
                if m is not None:
                    staged.setdefault(int(m[1]), []).append(Path(entry.path))
        keep = self.store.find_publishable_attempts(list(staged))
        for attempt_id, paths in staged.items():
            for path in paths:
                if attempt_id not in keep:
                    stale.append(("staged", path))
                elif (recorded := keep[attempt_id]) and Path(recorded).name != path.name:
                    stale.append(("staged", path))  # a copy whose commit lost
        return stale

    def _staging_folders(self) -> list[Path]:
        folder = self.output_dir / STAGING
        return [folder] if folder.is_dir() else []


class Delivery:
    """Stage, commit, publish: the steps of one attempt's result, resumable. ``advance()``
    does what is left and returns True (published) or False (the claim no longer held the
    job: its staged file is removed, nothing else touched); it raises a TransientError (a
    full disk, a busy or full database) to be called again later, keeping what it has done."""

    def __init__(
        self,
        results: Results,
        claim: Any,
        data: bytes | Iterable[bytes],
        result: dict[str, Any],
        *,
        expect_sha256: str | None = None,
    ) -> None:
        self.results = results
        self.claim = claim
        self.data = data
        self.result = result
        self.expect_sha256 = expect_sha256
        self.final = results.final_path(claim.job)
        self.staged: StagedImage | None = None
        self.committed = False

    def advance(self) -> bool:
        if self.staged is None:
            self.results.claim_folder()
            self.staged = stage(
                self.final,
                self.claim.attempt_id,
                self.data,
                self.results.output_dir,
                self.results.writer,
            )
            if self.expect_sha256 is not None and self.staged.sha256 != self.expect_sha256:
                self.abandon()
                raise ImageMismatch(
                    f"the image's sha256 is {self.staged.sha256}, not the "
                    f"{self.expect_sha256} announced"
                )
        if not self.committed:
            faults.point("results.staged")
            if not self.results.store.complete(
                self.claim,
                str(self.final),
                self.staged.sha256,
                self.result,
                staged_path=str(self.staged.path),
            ):
                self.abandon()
                return False
            self.committed = True
            faults.point("results.committed")
        return self.results.publish(
            self.claim.job_id, self.staged.path, self.final, self.staged.sha256
        )

    def abandon(self) -> None:
        """Give up before the commit: the staged file goes; the final path is never touched."""
        if self.staged is not None and not self.committed:
            _unlink(self.staged.path)


def _unlink(path: Path) -> bool:
    """Remove a file this module wrote; one that cannot be removed now is left for a later
    sweep (the folder may be read-only for a while). Whether it is gone."""
    try:
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError as exc:
        logger.warning("cannot remove %s: %s", path, describe_os_error(exc))
        return False
    return True


def _writer_dead(host: str, pid: int, entry: os.DirEntry[str], now: float) -> bool:
    """A temporary file's writer is gone: a dead process of this host, or a day's silence."""
    try:
        age = now - entry.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > TMP_STALE_S or process_gone(host, pid)
