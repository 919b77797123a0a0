"""The read model: every query that status, the dashboard, its JSON API and export ask of the
job database, and that users ask of it (``status``, ``list``, ``show``). Nothing here writes.

The write path (``JobStore``: submitting, the lease lifecycle, the fleet, ``verify``'s
mending and the user's hand on the queue) subclasses this class, so a ``JobStore`` reads as
well; code that only reads takes a ``ReadModel``.

Counting reads the trigger-kept ``job_counts`` table. The fleet's and the reports' queries
(workers, throughput, stage timings, failures, the quality gate) are ``report_reads``', which
this class inherits.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import aliased

from contract.errors import JobNotFound
from contract.status import ACTIVE_STATUSES, VISIBLE_STATUSES, AttemptStatus, BatchState, JobStatus
from orchestrator.database import sqlite_path
from orchestrator.models import (
    Attempt,
    Batch,
    DatabaseInfo,
    Job,
    JobCount,
    QueueState,
)
from orchestrator.ownership import Owner
from orchestrator.store.base import (
    _CHUNK,
    EXPORT_RUN,
    EXPORT_TIMINGS,
    OPEN_ATTEMPTS,
)
from orchestrator.store.report_reads import ReportReads
from orchestrator.store.reports import (
    IMAGE_COLUMNS,
    PROMPT_EXCERPT,
    SEARCH_WINDOW,
)
from orchestrator.store.sql import HAS_WORKABLE


def queue_runs() -> ColumnElement[bool]:
    """True while the whole queue is not paused (for Core statements)."""
    return ~exists().where(QueueState.paused_at.is_not(None))


def batch_runs() -> ColumnElement[bool]:
    """The job's batch is not paused (for Core statements on jobs)."""
    return Job.batch_id.not_in(select(Batch.id).where(Batch.paused_at.is_not(None)))


class ReadModel(ReportReads):
    """The job database, read: what status, the dashboard and export see (its reports are
    ``report_reads.ReportReads``'s)."""

    _owner: Owner | None = None

    # -- counting --------------------------------------------------------------------------------

    def count_jobs(self, batch_id: int | None = None) -> dict[str, int]:
        """Jobs by status (every status present, zeros included), from the trigger-kept table."""
        stmt = select(JobCount.status, func.sum(JobCount.n)).group_by(JobCount.status)
        if batch_id is not None:
            stmt = stmt.where(JobCount.batch_id == batch_id)
        out = {s.value: 0 for s in VISIBLE_STATUSES}
        with self.engine.connect() as conn:
            for status, n in conn.execute(stmt):
                if status in out:  # not `loading`: a submit in progress is nobody's yet
                    out[status] = int(n or 0)
        return out

    def count_jobs_among(self, job_ids: Sequence[int]) -> dict[str, int]:
        out = {s.value: 0 for s in VISIBLE_STATUSES}
        with self._tx(write=False) as conn:
            for i in range(0, len(job_ids), _CHUNK):
                chunk = job_ids[i : i + _CHUNK]
                for status, n in conn.execute(
                    select(Job.status, func.count()).where(Job.id.in_(chunk)).group_by(Job.status)
                ):
                    if status in out:
                        out[status] += n
        return out

    def has_active(self, batch_ids: Iterable[int] | None = None) -> bool:
        """Whether any job is pending, queued or running (in these batches)."""
        stmt = select(func.coalesce(func.sum(JobCount.n), 0)).where(
            JobCount.status.in_([s.value for s in ACTIVE_STATUSES])
        )
        if batch_ids is not None:
            stmt = stmt.where(JobCount.batch_id.in_(list(batch_ids)))
        with self.engine.connect() as conn:
            return bool(conn.execute(stmt).scalar_one())

    def has_workable(self) -> bool:
        """Whether any job is queued or running, or pending and not held back by a pause:
        what ``run`` and ``coordinator --until-done`` wait for (``has_active`` also counts
        paused jobs, which nobody will take until they are resumed)."""
        with self.engine.connect() as conn:
            return bool(conn.execute(HAS_WORKABLE).scalar())

    def list_active_batches(self) -> set[int]:
        """Batches with a job pending, queued or running."""
        stmt = (
            select(JobCount.batch_id)
            .where(JobCount.status.in_([s.value for s in ACTIVE_STATUSES]))
            .where(JobCount.n > 0)
            .distinct()
        )
        with self.engine.connect() as conn:
            return set(conn.execute(stmt).scalars())

    # -- batches and jobs ------------------------------------------------------------------------

    def list_batches(self) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            batches = [
                dict(r)
                for r in conn.execute(
                    select(Batch).where(Batch.state == BatchState.READY.value).order_by(Batch.id)
                ).mappings()
            ]
            per: dict[int, dict[str, int]] = {}
            for bid, status, n in conn.execute(
                select(JobCount.batch_id, JobCount.status, JobCount.n)
            ):
                per.setdefault(bid, {})[status] = n
        for b in batches:
            b["counts"] = {s.value: per.get(b["id"], {}).get(s.value, 0) for s in VISIBLE_STATUSES}
        return batches

    def list_loading_batches(self) -> list[dict[str, Any]]:
        """Batches still being submitted, with the jobs inserted so far."""
        with self._tx(write=False) as conn:
            batches = [
                dict(r)
                for r in conn.execute(
                    select(Batch.id, Batch.name, Batch.state, Batch.loader, Batch.rows)
                    .where(Batch.state != BatchState.READY.value)
                    .order_by(Batch.id)
                ).mappings()
            ]
            for b in batches:
                b["jobs_so_far"] = int(
                    conn.execute(
                        select(func.coalesce(func.sum(JobCount.n), 0)).where(
                            JobCount.batch_id == b["id"]
                        )
                    ).scalar_one()
                )
        return batches

    def find_job_ids(self, fingerprints: Sequence[str]) -> list[int]:
        ids: list[int] = []
        with self._tx(write=False) as conn:
            for i in range(0, len(fingerprints), _CHUNK):
                chunk = fingerprints[i : i + _CHUNK]
                ids.extend(conn.execute(select(Job.id).where(Job.fingerprint.in_(chunk))).scalars())
        return sorted(ids)

    def get_job(self, job_id: int) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            job = conn.execute(select(Job).where(Job.id == job_id)).mappings().first()
            if job is None:
                raise JobNotFound(f"no job with id {job_id}")
            out = dict(job)
            licences = conn.execute(
                select(Batch.licences_json).where(Batch.id == job["batch_id"])
            ).scalar()
            # The licence of its model as its batch recorded it at submit (None: not recorded).
            out["licence"] = json.loads(licences or "{}").get(job["model"])
            out["attempt_rows"] = [
                dict(r)
                for r in conn.execute(
                    select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id)
                ).mappings()
            ]
        return out

    def list_jobs(
        self,
        *,
        batch_id: int | None = None,
        status: str | None = None,
        below: float | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Jobs by id; ``below``: only gated jobs whose kept image scored under it."""
        stmt = select(Job).order_by(Job.id).limit(limit)
        if batch_id is not None:
            stmt = stmt.where(Job.batch_id == batch_id)
        if status is not None:
            stmt = stmt.where(Job.status == status)
        if below is not None:
            # min_score: the partial index of gated jobs (only they have a score)
            stmt = stmt.where(Job.min_score.is_not(None)).where(Job.score < below)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def list_batch_jobs(
        self,
        batch_id: int,
        status: str | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        now: float | None = None,
    ) -> list[dict[str, Any]]:
        """One page of a batch's jobs (of one status when given) in id order: prompt (its
        first ``PROMPT_EXCERPT`` characters), seed, status, attempts and a duration (the last
        attempt's total seconds; for a running job, the time since its attempt started).

        Every read is a range of ``ix_jobs_batch_status`` (batch, status, id): with a status,
        one range; without, one per status, each cut at ``offset + limit``, then merged.
        How many jobs match is ``count_jobs(batch_id)`` (kept by triggers), not a count here."""
        now = time.time() if now is None else now
        statuses = [status] if status is not None else [s.value for s in VISIBLE_STATUSES]

        def page(s: str, n: int) -> Any:
            return (
                select(Job.id)
                .where(Job.batch_id == batch_id)
                .where(Job.status == s)
                .order_by(Job.id)
                .limit(n)
            )

        if len(statuses) == 1:
            ids: Any = page(statuses[0], limit).offset(offset).subquery()
        else:
            parts = [select(page(s, offset + limit).subquery()) for s in statuses]
            merged = parts[0].union_all(*parts[1:]).subquery()
            ids = select(merged.c.id).order_by(merged.c.id).limit(limit).offset(offset).subquery()
        mine = aliased(Attempt)
        last = (
            select(mine.id)
            .where(mine.job_id == Job.id)
            .order_by(mine.id.desc())
            .limit(1)
            .correlate(Job)
            .scalar_subquery()
        )
        stmt = (
            select(
                Job.id,
                Job.batch_id,
                func.substr(Job.prompt, 1, PROMPT_EXCERPT).label("prompt"),
                func.length(Job.prompt).label("prompt_chars"),
                Job.seed,
                Job.status,
                Job.attempts,
                Job.max_attempts,
                Job.started_at,
                Job.finished_at,
                Job.last_error,
                Attempt.status.label("attempt_status"),
                Attempt.started_at.label("attempt_started_at"),
                Attempt.total_s,
            )
            .join(ids, ids.c.id == Job.id)
            .outerjoin(Attempt, Attempt.id == last)
            .order_by(Job.id)
        )
        with self._tx(write=False) as conn:
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
        for r in rows:
            if r["total_s"] is not None:
                r["duration_s"] = r["total_s"]
            elif r["attempt_status"] in OPEN_ATTEMPTS and r["attempt_started_at"] is not None:
                r["duration_s"] = max(0.0, now - r["attempt_started_at"])
            else:
                r["duration_s"] = None
        return rows

    # -- the pause -------------------------------------------------------------------------------

    def read_pauses(self) -> dict[str, Any]:
        """What is paused: ``queue_paused_at`` (None while the queue runs) and ``batches``,
        each paused batch with id, name, paused_at and ``pending`` (its jobs that wait);
        ``waiting``: pending jobs that no worker may take now because of a pause."""
        pending = JobStatus.PENDING.value
        with self._tx(write=False) as conn:
            queue = conn.execute(select(QueueState.paused_at).where(QueueState.id == 1)).scalar()
            batches = [
                dict(r)
                for r in conn.execute(
                    select(
                        Batch.id,
                        Batch.name,
                        Batch.paused_at,
                        select(func.coalesce(func.sum(JobCount.n), 0))
                        .where(JobCount.batch_id == Batch.id)
                        .where(JobCount.status == pending)
                        .scalar_subquery()
                        .label("pending"),
                    )
                    .where(Batch.paused_at.is_not(None))
                    .order_by(Batch.id)
                ).mappings()
            ]
            if queue is not None:
                waiting = conn.execute(
                    select(func.coalesce(func.sum(JobCount.n), 0)).where(JobCount.status == pending)
                ).scalar_one()
            else:
                waiting = sum(b["pending"] for b in batches)
        return {"queue_paused_at": queue, "batches": batches, "waiting": int(waiting)}

    def has_pauses(self) -> bool:
        """Whether any batch, or the queue, is paused (one cheap read)."""
        with self.engine.connect() as conn:
            return bool(
                conn.execute(
                    select(
                        exists().where(Batch.paused_at.is_not(None))
                        | exists().where(QueueState.paused_at.is_not(None))
                    )
                ).scalar()
            )

    # -- images and export -----------------------------------------------------------------------

    def list_recent_images(self, limit: int = 24, offset: int = 0) -> list[dict[str, Any]]:
        """Succeeded jobs, most recently finished first, with what made their image."""
        stmt = (
            select(*IMAGE_COLUMNS)
            .where(Job.status == JobStatus.SUCCEEDED.value)
            .order_by(Job.finished_at.desc())
            .limit(limit)
            .offset(offset)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def list_gallery_images(
        self,
        *,
        text: str | None = None,
        tag: str | None = None,
        batch_id: int | None = None,
        limit: int = 24,
        offset: int = 0,
        window: int = SEARCH_WINDOW,
    ) -> dict[str, Any]:
        """Succeeded jobs with what made their image, newest first (of one batch: highest job
        id first), whose prompt holds ``text`` and whose tags hold ``tag`` (both ignore case).

        Without text or tag the listing is an index range (``ix_jobs_status_finished_at``, or
        ``ix_jobs_batch_status`` for a batch). With them, only the newest ``window`` images
        are searched (``searched`` says how many were, ``cut`` whether older ones exist), so a
        search that matches nothing still reads a bounded number of rows."""
        base = select(Job.id).where(Job.status == JobStatus.SUCCEEDED.value)
        if batch_id is not None:
            base = base.where(Job.batch_id == batch_id).order_by(Job.id.desc())
        else:
            base = base.order_by(Job.finished_at.desc(), Job.id.desc())
        columns = (*IMAGE_COLUMNS, Job.tags)
        order = (
            (Job.id.desc(),) if batch_id is not None else (Job.finished_at.desc(), Job.id.desc())
        )
        searching = bool(text) or bool(tag)
        searched: int | None = None
        cut = False
        with self._tx(write=False) as conn:
            if not searching:
                ids = base.limit(limit).offset(offset).subquery()
            else:
                pool = base.limit(window).subquery()
                searched = int(conn.execute(select(func.count()).select_from(pool)).scalar_one())
                cut = searched >= window
                matched = select(Job.id).join(pool, pool.c.id == Job.id)
                if text:
                    matched = matched.where(Job.prompt.icontains(text, autoescape=True))
                if tag:
                    # tags are stored "a,b,c": match one whole tag, whatever its case
                    padded = func.lower("," + Job.tags + ",")
                    matched = matched.where(padded.contains(f",{tag.lower()},", autoescape=True))
                ids = matched.order_by(*order).limit(limit).offset(offset).subquery()
            stmt = select(*columns).join(ids, ids.c.id == Job.id).order_by(*order)
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
        return {"images": rows, "searched": searched, "cut": cut, "window": window}

    def find_image_file(self, job_id: int) -> str | None:
        """The output path of a succeeded job: the only files the dashboard serves."""
        stmt = (
            select(Job.output_path)
            .where(Job.id == job_id)
            .where(Job.status == JobStatus.SUCCEEDED.value)
        )
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def list_export_rows(self, batch_id: int | None = None) -> list[dict[str, Any]]:
        """The rows of a dataset export: succeeded jobs by id, each with the stage timings of
        its succeeded attempt (the newest one, should a job ever have two)."""
        # An alias, so the subquery correlates with the outer jobs row only (found by the
        # attempts.job_id index).
        mine = Attempt.__table__.alias("succeeded_attempt")
        attempt_id = (
            select(func.max(mine.c.id))
            .where(mine.c.job_id == Job.id)
            .where(mine.c.status == AttemptStatus.SUCCEEDED.value)
            .correlate(Job)
            .scalar_subquery()
        )
        stmt = (
            select(
                *Job.__table__.columns,
                *(getattr(Attempt, c) for c in (*EXPORT_RUN, *EXPORT_TIMINGS)),
            )
            .outerjoin(Attempt, Attempt.id == attempt_id)
            .where(Job.status == JobStatus.SUCCEEDED.value)
            .order_by(Job.id)
        )
        if batch_id is not None:
            stmt = stmt.where(Job.batch_id == batch_id)
        with self._tx(write=False) as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def read_licences(self, batch_id: int | None = None) -> dict[int, str | None]:
        """Each batch's recorded licences (``batches.licences_json``: model to licence)."""
        stmt = select(Batch.id, Batch.licences_json)
        if batch_id is not None:
            stmt = stmt.where(Batch.id == batch_id)
        with self._tx(write=False) as conn:
            return {bid: licences for bid, licences in conn.execute(stmt)}

    def identify_owner(self) -> Owner:
        """This database as the owner an output folder records: its id, and where it is."""
        if self._owner is None:
            with self.engine.connect() as conn:
                uid, created = conn.execute(
                    select(DatabaseInfo.uid, DatabaseInfo.created_at).where(DatabaseInfo.id == 1)
                ).one()
            path = sqlite_path(self.engine.url.render_as_string(hide_password=False))
            where = os.path.realpath(path) if path is not None else str(self.engine.url)
            self._owner = Owner(uid, where, created)
        return self._owner
