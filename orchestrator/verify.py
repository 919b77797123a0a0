"""``orchestrate verify``: the invariants of an unattended night, checked (and mended).

- every succeeded job's image exists, whole, with the sha256 its succeeded attempt recorded;
- no image file under ``<out>/<batch>/`` belongs to a job that is not succeeded with that path
  (an orphan), and no staged or temporary file waits for an attempt that can no longer
  publish it;
- no succeeded job waits to be published, no running job holds an expired lease, no attempt
  is open while its job is no longer held by it, no half-submitted batch is left.

``repair=True`` mends what it can: it publishes what was committed, puts jobs whose image is
missing or damaged back to pending (to be made again), removes orphans and stale staged files,
recovers expired leases, closes stranded attempts and finishes or removes half-submitted
batches; then checks again. ``Report.clean`` is whether all was (or now is) well.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.results import _STAGED, _TMP, STAGING, Results, _writer_dead, sha256_file
from orchestrator.store import JobStore
from orchestrator.store.jobs import _loader_dead

_OUR_IMAGE = re.compile(r"^(\d{6,})(-.*)?\.png$")


@dataclass
class Report:
    checked: int = 0  # succeeded jobs whose image was checked
    missing: list[dict[str, Any]] = field(default_factory=list)
    corrupt: list[dict[str, Any]] = field(default_factory=list)
    unrecorded: list[int] = field(default_factory=list)  # succeeded before sha256s were kept
    unpublished: list[int] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    staged: int = 0  # staged or temporary files nobody will publish
    expired_leases: list[int] = field(default_factory=list)
    open_attempts: list[int] = field(default_factory=list)
    half_submitted: list[int] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)

    @property
    def problems(self) -> int:
        return (
            len(self.missing)
            + len(self.corrupt)
            + len(self.unrecorded)
            + len(self.unpublished)
            + len(self.orphans)
            + self.staged
            + len(self.expired_leases)
            + len(self.open_attempts)
            + len(self.half_submitted)
        )

    @property
    def clean(self) -> bool:
        return self.problems == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "checked": self.checked,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "unrecorded": self.unrecorded,
            "unpublished": self.unpublished,
            "orphans": self.orphans,
            "staged": self.staged,
            "expired_leases": self.expired_leases,
            "open_attempts": self.open_attempts,
            "half_submitted": self.half_submitted,
            "repaired": self.repaired,
        }

    def lines(self) -> list[str]:
        out = [f"checked {self.checked} succeeded jobs' images"]
        for r in self.missing:
            out.append(f"job {r['id']}: image missing: {r['output_path']}")
        for r in self.corrupt:
            out.append(f"job {r['id']}: image damaged (sha256 differs): {r['output_path']}")
        if self.unrecorded:
            out.append(
                f"{len(self.unrecorded)} succeeded jobs have no recorded sha256 (older runs)"
            )
        if self.unpublished:
            out.append(
                f"{len(self.unpublished)} succeeded jobs not yet published: {self.unpublished[:10]}"
            )
        for path in self.orphans[:20]:
            out.append(f"orphan image (no succeeded job owns it): {path}")
        if len(self.orphans) > 20:
            out.append(f"... and {len(self.orphans) - 20} more orphans")
        if self.staged:
            out.append(f"{self.staged} staged or temporary files nobody will publish")
        if self.expired_leases:
            out.append(f"running jobs with an expired lease: {self.expired_leases[:10]}")
        if self.open_attempts:
            out.append(f"open attempts whose job no longer holds them: {self.open_attempts[:10]}")
        if self.half_submitted:
            out.append(f"half-submitted batches of dead loaders: {self.half_submitted}")
        for what, n in self.repaired.items():
            out.append(f"repaired: {n} {what}")
        out.append(
            "all is well" if self.clean else f"{self.problems} problem{'s' * (self.problems != 1)}"
        )
        return out


def verify(store: JobStore, output_dir: Path, *, repair: bool = False) -> Report:
    """Check every invariant; with ``repair``, mend what is wrong and check again."""
    report = _check(store, Path(output_dir))
    if not repair or report.clean:
        return report
    repaired = _repair(store, Path(output_dir), report)
    after = _check(store, Path(output_dir))
    after.repaired = repaired
    return after


def _check(store: JobStore, output_dir: Path) -> Report:
    r = Report()
    owned: dict[str, int] = {}
    for page in store.succeeded_images():
        for row in page:
            r.checked += 1
            path = row["output_path"]
            if path:
                owned[os.path.abspath(path)] = row["id"]
            if row["published_at"] is None and row["output_sha256"] is not None:
                r.unpublished.append(row["id"])
                continue
            if not path or not Path(path).is_file():
                r.missing.append(row)
                continue
            if row["output_sha256"] is None:
                r.unrecorded.append(row["id"])
            elif sha256_file(Path(path)) != row["output_sha256"]:
                r.corrupt.append(row)
    r.orphans = _orphans(store, output_dir, owned)
    r.staged = len(_stale_staging(store, output_dir))
    stranded = store.stranded()
    r.expired_leases = [j["id"] for j in stranded["expired_leases"]]
    r.open_attempts = [a["id"] for a in stranded["open_attempts"]]
    now = time.time()
    r.half_submitted = [
        b["id"]
        for b in store.loading_batches()
        if _loader_dead(b.get("loader"), b.get("loader_seen_at"), now)
    ]
    return r


def _orphans(store: JobStore, output_dir: Path, owned: dict[str, int]) -> list[str]:
    """Image files named like ours under ``<out>/<batch>/`` that no succeeded job owns."""
    found: list[str] = []
    if not output_dir.is_dir():
        return found
    for batch in os.scandir(output_dir):
        if not (batch.is_dir() and batch.name.isdigit()):
            continue
        for entry in os.scandir(batch.path):
            if entry.is_file() and _OUR_IMAGE.match(entry.name):
                path = os.path.abspath(entry.path)
                if path not in owned:
                    found.append(path)
    return sorted(found)


def _stale_staging(store: JobStore, output_dir: Path) -> list[Path]:
    """Staged files whose attempt can no longer publish them, and temporary files of dead
    writers: what ``Results.sweep`` would remove (computed without removing)."""
    folder = output_dir / STAGING
    if not folder.is_dir():
        return []
    now = time.time()
    stale: list[Path] = []
    staged: dict[int, Path] = {}
    for entry in os.scandir(folder):
        m = _TMP.match(entry.name)
        if m is not None:
            if _writer_dead(m["host"], int(m["pid"]), entry, now):
                stale.append(Path(entry.path))
            continue
        m = _STAGED.match(entry.name)
        if m is not None:
            staged[int(m[1])] = Path(entry.path)
    keep = store.attempts_that_may_publish(list(staged))
    stale.extend(p for a, p in staged.items() if a not in keep)
    return stale


def _repair(store: JobStore, output_dir: Path, report: Report) -> dict[str, int]:
    results = Results(store, output_dir)
    done: dict[str, int] = {}

    def count(what: str, n: int) -> None:
        if n:
            done[what] = done.get(what, 0) + n

    submits = store.recover_submits()
    count("half-submitted batches finished", len(submits["published"]))
    count("half-submitted batches removed", len(submits["removed"]))
    count("expired leases recovered", store.recover_expired())
    count("unpublished results published", results.recover(limit=10**9))
    for row in report.missing + report.corrupt:
        why = "missing" if row in report.missing else "damaged"
        if row["output_path"]:
            # While the job is succeeded nothing else writes its path: remove the damaged
            # file before the job becomes pending again.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(row["output_path"])
        if store.image_lost(row["id"], f"image {why}: made again by verify --repair"):
            count("jobs with a missing or damaged image put back to pending", 1)
    for job_id in report.unrecorded:
        path = store.get_job(job_id)["output_path"]
        if store.adopt_image(job_id, sha256_file(Path(path))):
            count("older images' sha256 recorded", 1)
    closed = store.close_attempts(
        report.open_attempts, "closed by verify --repair: its job no longer holds it"
    )
    count("stranded attempts closed", closed)
    swept = results.sweep()
    count("staged or temporary files removed", swept["staged"] + swept["tmp"])
    ids = {p: _job_id_of(p) for p in report.orphans}
    owners = store.image_owners(list(ids.values()))
    removed = 0
    for path, job_id in ids.items():
        status, recorded = owners.get(job_id, ("gone", None))
        # Not a file an active job may publish to: its publish replaces it anyway, and a
        # retry may have started since the check.
        if status in ("pending", "queued", "running"):
            continue
        if status == "succeeded" and recorded and os.path.abspath(recorded) == path:
            continue  # published meanwhile
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
    count("orphan images removed", removed)
    return done


def _job_id_of(path: str) -> int:
    m = _OUR_IMAGE.match(Path(path).name)
    assert m is not None
    return int(m[1])
