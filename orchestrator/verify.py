"""``orchestrate verify``: the invariants of an unattended night, checked (and mended).

- every succeeded job's image exists, whole, with the sha256 its succeeded attempt recorded;
- no image file under the output folder sits exactly where one of this database's jobs would
  publish while that job does not own it (an orphan), and no staged or temporary file waits
  for an attempt that can no longer publish it;
- no succeeded job waits to be published, no running job holds an expired lease, no attempt
  is open while its job is no longer held by it, no half-submitted batch is left.

Files are compared by identity (device and inode), never by how a path is spelled: an output
folder named through a symlink holds the same images. Any other file in the folder (a
``reproduce --compare`` copy, a note of the user's) is listed and left alone.

``repair=True`` mends what it can: it publishes what was committed, puts jobs whose image is
missing or damaged back to pending (to be made again), moves orphans and damaged images aside
into ``<out>/.orphaned/<time>/`` (nothing is deleted but staged and temporary files this tool
wrote and named by their attempt), recovers expired leases, closes stranded attempts and
finishes or removes half-submitted batches; then checks again. It refuses, changing nothing,
when the folder belongs to another database, when most recorded images lie outside it, or
when the folder records no owner and holds none of the images: each says the folder given is
not the one the images were written to (a symlink's target elsewhere, a container's path, a
drive not mounted), and making the whole dataset again would be the wrong mend.
``Report.clean`` is whether all was (or now is) well.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import UsageError
from contract.status import ACTIVE_STATUSES, JobStatus
from orchestrator import ownership
from orchestrator.output import image_path
from orchestrator.results import Results, sha256_file
from orchestrator.store import JobStore
from orchestrator.store.jobs import _loader_dead

_OUR_IMAGE = re.compile(r"^(\d{6,})(-.*)?\.png$")
QUARANTINE = ".orphaned"
_SHOWN = 20  # paths listed per kind of finding


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
    # Not problems: what the folder holds besides this database's images, and where the
    # recorded images are.
    other_files: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)  # recorded images not under the folder
    present: int = 0  # published images found in place
    expected: int = 0  # published images recorded
    owner: str | None = None  # the database the folder records, described
    repaired: dict[str, int] = field(default_factory=dict)
    moved_to: str | None = None  # where repair moved orphans and damaged images

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
            "other_files": self.other_files,
            "outside": len(self.outside),
            "repaired": self.repaired,
            "moved_to": self.moved_to,
        }

    def lines(self) -> list[str]:
        out = [f"checked {self.checked} succeeded jobs' images"]
        for r in self.missing[:_SHOWN]:
            out.append(f"job {r['id']}: image missing: {r['output_path']}")
        if len(self.missing) > _SHOWN:
            out.append(f"... and {len(self.missing) - _SHOWN} more missing images")
        for r in self.corrupt[:_SHOWN]:
            out.append(f"job {r['id']}: image damaged (sha256 differs): {r['output_path']}")
        if len(self.corrupt) > _SHOWN:
            out.append(f"... and {len(self.corrupt) - _SHOWN} more damaged images")
        if self.outside:
            out.append(
                f"{len(self.outside)} of {self.checked} succeeded jobs' images are recorded "
                f"outside this output folder (e.g. {self.outside[0]})"
            )
        if self.unrecorded:
            out.append(
                f"{len(self.unrecorded)} succeeded jobs have no recorded sha256 (older runs)"
            )
        if self.unpublished:
            out.append(
                f"{len(self.unpublished)} succeeded jobs not yet published: {self.unpublished[:10]}"
            )
        for path in self.orphans[:_SHOWN]:
            out.append(f"orphan image (its job does not own it): {path}")
        if len(self.orphans) > _SHOWN:
            out.append(f"... and {len(self.orphans) - _SHOWN} more orphans")
        if self.staged:
            out.append(f"{self.staged} staged or temporary files nobody will publish")
        if self.expired_leases:
            out.append(f"running jobs with an expired lease: {self.expired_leases[:10]}")
        if self.open_attempts:
            out.append(f"open attempts whose job no longer holds them: {self.open_attempts[:10]}")
        if self.half_submitted:
            out.append(f"half-submitted batches of dead loaders: {self.half_submitted}")
        if self.other_files:
            shown = ", ".join(self.other_files[:3])
            more = f" and {len(self.other_files) - 3} more" if len(self.other_files) > 3 else ""
            out.append(
                f"left alone: {len(self.other_files)} other image file"
                f"{'s' if len(self.other_files) != 1 else ''} in the folder, not where a job "
                f"of this database publishes ({shown}{more})"
            )
        for what, n in self.repaired.items():
            out.append(f"repaired: {n} {what}")
        if self.moved_to:
            out.append(f"moved aside, not deleted: {self.moved_to}")
        n = self.problems
        out.append("all is well" if self.clean else f"{n} problem{'s' if n != 1 else ''}")
        return out


def verify(
    store: JobStore, output_dir: Path, *, repair: bool = False, adopt: bool = False
) -> Report:
    """Check every invariant; with ``repair``, mend what is wrong and check again. ``adopt``
    lets a repair claim a folder that records no owner and holds none of the images."""
    output_dir = Path(output_dir)
    report = _check(store, output_dir)
    if not repair or report.clean:
        return report
    _refuse_repair(output_dir, report, adopt=adopt)
    repaired, moved_to = _repair(store, output_dir, report)
    after = _check(store, output_dir)
    after.repaired = repaired
    after.moved_to = moved_to
    return after


def _under(path: str, root_real: str) -> bool:
    """Whether ``path`` lies in the folder whose real path is ``root_real`` (symlinks on
    either side resolved)."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _check(store: JobStore, output_dir: Path) -> Report:
    r = Report()
    owner = ownership.check(output_dir, store.identify_owner())
    r.owner = owner.describe() if owner else None
    root_real = os.path.realpath(output_dir)
    owned: set[tuple[int, int]] = set()
    for page in store.iter_succeeded_images():
        for row in page:
            r.checked += 1
            path = row["output_path"]
            if path:
                ident = _identity(path)
                if ident is not None:
                    owned.add(ident)
                if row["published_at"] is not None:
                    r.expected += 1
                    r.present += ident is not None
                if not _under(path, root_real):
                    r.outside.append(path)
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
    r.orphans, r.other_files = _orphans(store, output_dir, owned)
    r.staged = sum(Results(store, output_dir).sweep(dry_run=True).values())
    stranded = store.find_stranded()
    r.expired_leases = [j["id"] for j in stranded["expired_leases"]]
    r.open_attempts = [a["id"] for a in stranded["open_attempts"]]
    now = time.time()
    r.half_submitted = [
        b["id"]
        for b in store.list_loading_batches()
        if _loader_dead(b.get("loader"), b.get("loader_seen_at"), now)
    ]
    return r


def _image_files(output_dir: Path) -> list[str]:
    """Files named like our images anywhere under the folder, outside hidden folders (staging,
    what repair moved aside)."""
    found: list[str] = []
    if not output_dir.is_dir():
        return found
    for folder, dirs, files in os.walk(output_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(folder, f) for f in sorted(files) if _OUR_IMAGE.match(f))
    return found


def _orphans(
    store: JobStore, output_dir: Path, owned: set[tuple[int, int]]
) -> tuple[list[str], list[str]]:
    """Files exactly where one of this database's jobs publishes its image that its job does
    not own (orphans), and the other image-like files (left alone: not provably ours)."""
    candidates = _image_files(output_dir)
    jobs = store.read_image_owners([_job_id_of(p) for p in candidates])
    orphans: list[str] = []
    others: list[str] = []
    for path in candidates:
        if _identity(path) in owned:
            continue
        job = jobs.get(_job_id_of(path))
        if job is not None and str(image_path(output_dir, job)) == path:
            orphans.append(path)
        else:
            others.append(path)
    return orphans, others


def _refuse_repair(output_dir: Path, report: Report, *, adopt: bool) -> None:
    """Refuse, in one sentence, a repair that would mend the wrong folder."""
    with_path = report.checked - len([r for r in report.missing if not r["output_path"]])
    if report.outside and 2 * len(report.outside) > with_path:
        raise UsageError(
            f"verify --repair changed nothing: {len(report.outside)} of {with_path} succeeded "
            f"jobs' images are recorded outside {output_dir} (e.g. {report.outside[0]}), so "
            "it is not the folder they were written to; give that folder with --output "
            "(paths recorded inside a container or on another machine must be checked there)"
        )
    if report.owner is None and report.present == 0 and report.expected > 0 and not adopt:
        raise UsageError(
            f"verify --repair changed nothing: {output_dir} holds none of the "
            f"{report.expected} succeeded jobs' images and does not record this database as "
            "its owner; if it is the right folder (not a drive that is not mounted) and the "
            "images are really gone, run `orchestrate verify --repair --adopt` to make them "
            "all again"
        )


def _repair(store: JobStore, output_dir: Path, report: Report) -> tuple[dict[str, int], str | None]:
    results = Results(store, output_dir)
    if output_dir.is_dir() or report.missing or report.corrupt:
        results.claim_folder()
    root_real = os.path.realpath(output_dir)
    aside = output_dir / QUARANTINE / time.strftime("%Y%m%d-%H%M%S")
    moved = 0
    done: dict[str, int] = {}

    def count(what: str, n: int) -> None:
        if n:
            done[what] = done.get(what, 0) + n

    def move_aside(path: str) -> bool:
        nonlocal moved
        target = aside / os.path.relpath(os.path.realpath(path), root_real)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return False
        moved += 1
        return True

    submits = store.recover_submits()
    count("half-submitted batches finished", len(submits["published"]))
    count("half-submitted batches removed", len(submits["removed"]))
    count("expired leases recovered", store.recover_expired())
    results.recover(limit=10**9, backoff=False)
    if report.unpublished:
        still = {r["id"] for r in store.list_unpublished(10**9)}
        now = store.read_image_owners(report.unpublished)
        count(
            "unpublished results published",
            sum(
                1
                for j, row in now.items()
                if row["status"] == JobStatus.SUCCEEDED and j not in still
            ),
        )
    for row in report.missing + report.corrupt:
        path = row["output_path"]
        if path and not _under(path, root_real):
            continue  # another folder's image: not ours to mend from here
        if row in report.corrupt and path:
            # While the job is succeeded nothing else writes its path: move the damaged file
            # aside before the job becomes pending again.
            move_aside(path)
        why = "missing" if row in report.missing else "damaged"
        if store.mark_image_lost(row["id"], f"image {why}: made again by verify --repair"):
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
    jobs = store.read_image_owners([_job_id_of(p) for p in report.orphans])
    orphans = 0
    for path in report.orphans:
        job = jobs.get(_job_id_of(path))
        # A job that may publish (again) since the check, or one that owns the file now.
        if job is None or job["status"] in ACTIVE_STATUSES:
            continue
        recorded = job["output_path"]
        if recorded and _identity(recorded) == _identity(path):
            continue
        if move_aside(path):
            orphans += 1
    count("orphan images moved aside", orphans)
    return done, (str(aside) if moved else None)


def _job_id_of(path: str) -> int:
    m = _OUR_IMAGE.match(Path(path).name)
    assert m is not None
    return int(m[1])
