"""The read model: every query that status, the dashboard, its JSON API and export ask of the
job database, and that users ask of it (``status``, ``list``, ``show``). Nothing here writes.

The write path (``JobStore``: submitting, the lease lifecycle, the fleet, ``verify``'s
mending and the user's hand on the queue) subclasses this class, so a ``JobStore`` reads as
well; code that only reads takes a ``ReadModel``.

Counting reads the trigger-kept ``job_counts`` table. Every report reads a bounded window of
recent work through an index (the last N attempts by id, or the attempts finished in the last
minutes), so each costs the same at a million jobs as at a hundred; percentiles are computed
in Python over that window (``reports``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, case, exists, func, select, text
from sqlalchemy.orm import aliased

from contract.errors import JobNotFound
from contract.job import GATE_ERROR_PREFIX
from contract.status import ACTIVE_STATUSES, VISIBLE_STATUSES, AttemptStatus, BatchState, JobStatus
from orchestrator.database import sqlite_path
from orchestrator.models import (
    Attempt,
    Batch,
    CoordinatorLease,
    DatabaseInfo,
    DeadLetter,
    Job,
    JobCount,
    QueueState,
    Worker,
)
from orchestrator.ownership import Owner
from orchestrator.store.base import (
    _CHUNK,
    EXPORT_RUN,
    EXPORT_TIMINGS,
    OPEN_ATTEMPTS,
    TIMING_COLUMNS,
    TIMING_WINDOW,
    StoreBase,
    chunks,
)
from orchestrator.store.reports import (
    FAILED_ATTEMPTS,
    IMAGE_COLUMNS,
    PROMPT_EXCERPT,
    RECENT_WINDOW,
    SEARCH_WINDOW,
    STAGES,
    THROUGHPUT_WINDOW_S,
    error_key,
    liveness,
    summarize,
)
from orchestrator.store.sql import FAILURE_GROUPS, HAS_WORKABLE, THROUGHPUT


def queue_runs() -> ColumnElement[bool]:
    """True while the whole queue is not paused (for Core statements)."""
    return ~exists().where(QueueState.paused_at.is_not(None))


def batch_runs() -> ColumnElement[bool]:
    """The job's batch is not paused (for Core statements on jobs)."""
    return Job.batch_id.not_in(select(Batch.id).where(Batch.paused_at.is_not(None)))


class ReadModel(StoreBase):
    """The job database, read: what status, the dashboard and export see."""

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

    # -- the fleet -------------------------------------------------------------------------------

    def list_workers(self, seen_within: float | None = 3600.0) -> list[dict[str, Any]]:
        """Workers seen in the last ``seen_within`` seconds (all when None), newest first, with
        mean seconds per image."""
        stmt = select(Worker).order_by(Worker.last_seen.desc())
        if seen_within is not None:
            stmt = stmt.where(Worker.last_seen >= time.time() - seen_within)
        with self.engine.connect() as conn:
            out = [dict(r) for r in conn.execute(stmt).mappings()]
        for w in out:
            w["s_per_image"] = w["busy_s"] / w["jobs_done"] if w["jobs_done"] else None
        return out

    def read_worker_stats(
        self, seen_within: float | None = 24 * 3600.0, window: int = RECENT_WINDOW
    ) -> list[dict[str, Any]]:
        """Workers seen in the last ``seen_within`` seconds (all when None), newest first: the
        workers table's row plus mean and p95 seconds per image over each worker's succeeded
        attempts among the last ``window``, and its failed or lost attempts among theirs."""
        workers = select(Worker).order_by(Worker.last_seen.desc())
        if seen_within is not None:
            workers = workers.where(Worker.last_seen >= time.time() - seen_within)
        ok = self._recent(
            AttemptStatus.SUCCEEDED.value, Attempt.worker, Attempt.total_s, window=window
        )
        with self._tx(write=False) as conn:
            out = [dict(r) for r in conn.execute(workers).mappings()]
            times: dict[str, list[float | None]] = {}
            for name, total_s in conn.execute(ok):
                times.setdefault(name, []).append(total_s)
            failed: dict[str, int] = {}
            for status in FAILED_ATTEMPTS:
                bad = self._recent(status, Attempt.worker, window=window).subquery()
                for name, n in conn.execute(
                    select(bad.c.worker, func.count()).group_by(bad.c.worker)
                ):
                    failed[name] = failed.get(name, 0) + n
            current = self._current_jobs(conn, [w["current_job"] for w in out])
        for w in out:
            w.update(liveness(w, current.get(w["current_job"] or 0)))
            stats = summarize(times.get(w["name"], []))
            w["s_per_image"] = w["busy_s"] / w["jobs_done"] if w["jobs_done"] else None
            w["recent_images"] = stats["n"]
            w["mean_s"] = stats["mean"]
            w["p95_s"] = stats["p95"]
            w["recent_failed_attempts"] = failed.get(w["name"], 0)
        return out

    @staticmethod
    def _current_jobs(conn: Any, job_ids: Sequence[int | None]) -> dict[int, dict[str, Any]]:
        """The jobs workers say they are busy on: status, lease owner and expiry, and the
        open attempt's worker and start (by primary key and ``attempts.job_id``)."""
        wanted = sorted({j for j in job_ids if j})
        out: dict[int, dict[str, Any]] = {}
        for part in chunks(wanted):
            for r in conn.execute(
                select(Job.id, Job.status, Job.lease_owner, Job.lease_expires_at).where(
                    Job.id.in_(part)
                )
            ).mappings():
                out[r["id"]] = {**r, "attempts": {}}
            for job_id, worker, started_at in conn.execute(
                select(Attempt.job_id, Attempt.worker, Attempt.started_at)
                .where(Attempt.job_id.in_(part))
                .where(Attempt.status == AttemptStatus.RUNNING.value)
            ):
                if job_id in out:
                    out[job_id]["attempts"][worker] = started_at
        return out

    def read_coordinator(self) -> dict[str, Any] | None:
        """The coordinator lease row (who, since when, live until, doing what), if any."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(CoordinatorLease).where(CoordinatorLease.id == 1))
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    def read_dead_letters(self, limit: int = 20) -> dict[str, Any]:
        """How many messages were refused (all time: ids count them), and the newest."""
        with self.engine.connect() as conn:
            total = conn.execute(select(func.max(DeadLetter.id))).scalar() or 0
            recent = [
                dict(r)
                for r in conn.execute(
                    select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
                ).mappings()
            ]
        return {"count": int(total), "recent": recent}

    # -- timings ---------------------------------------------------------------------------------

    def measure_throughput(
        self, window_s: float = THROUGHPUT_WINDOW_S, *, now: float | None = None
    ) -> dict[str, Any]:
        """Images per minute from the attempts that succeeded in the last ``window_s`` seconds,
        overall and per batch, plus the failed attempts of the window.

        The rate is over the window, or over the time since the earliest of those attempts
        started when work began inside it, so a fresh run is not under-reported.
        """
        now = time.time() if now is None else now
        since = now - window_s
        stmt = THROUGHPUT.bindparams(succeeded=AttemptStatus.SUCCEEDED.value, since=since)
        failed = (
            select(func.count())
            .select_from(Attempt)
            .where(Attempt.status.in_(FAILED_ATTEMPTS))
            .where(Attempt.finished_at >= since)
        )
        with self._tx(write=False) as conn:
            rows = conn.execute(stmt).all()
            failed_n = int(conn.execute(failed).scalar_one())

        def rate(images: int, first_start: float | None) -> tuple[float, float]:
            span = now - max(since, first_start if first_start is not None else since)
            span = max(span, 1.0)  # one image a moment after it started is not 1000/min
            return images * 60.0 / span, span

        by_batch: dict[int, dict[str, float]] = {}
        for bid, images, first_start in rows:
            per_min, span = rate(images, first_start)
            by_batch[bid] = {"images": images, "images_per_min": per_min, "span_s": span}
        total = sum(r.images for r in rows)
        first = min((r.first_start for r in rows if r.first_start is not None), default=None)
        per_min, span = rate(total, first) if total else (0.0, window_s)
        return {
            "window_s": window_s,
            "images": total,
            "images_per_min": per_min,
            "span_s": span,
            "failed_attempts": failed_n,
            "by_batch": by_batch,
        }

    def read_stage_timings(
        self, batch_id: int | None = None, window: int = TIMING_WINDOW
    ) -> dict[str, float | None]:
        """Mean seconds per stage over the most recent ``window`` succeeded attempts (``n`` is
        how many there were): what the fleet does now, at a cost that does not grow with the
        queue."""
        sub = self._recent(
            AttemptStatus.SUCCEEDED.value,
            *(getattr(Attempt, c) for c in TIMING_COLUMNS),
            window=window,
            batch_id=batch_id,
        ).subquery()
        stmt = select(
            func.count().label("n"), *(func.avg(sub.c[c]).label(c) for c in TIMING_COLUMNS)
        )
        with self.engine.connect() as conn:
            return dict(conn.execute(stmt).mappings().one())

    def read_stage_percentiles(
        self, batch_id: int | None = None, window: int = TIMING_WINDOW
    ) -> dict[str, Any]:
        """p50/p95 (and mean) seconds of each stage over the last ``window`` succeeded
        attempts; ``denoise_per_step_s`` divides each attempt's denoise time by its steps."""
        recent = self._recent(
            AttemptStatus.SUCCEEDED.value,
            Attempt.job_id,
            Attempt.queue_wait_s,
            Attempt.load_s,
            Attempt.text_encode_s,
            Attempt.denoise_s,
            Attempt.decode_s,
            Attempt.encode_s,
            Attempt.total_s,
            window=window,
            batch_id=batch_id,
        )
        sub = recent.subquery()
        stmt = select(sub, Job.steps).join(Job, Job.id == sub.c.job_id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        columns: dict[str, list[float | None]] = {s: [] for s in STAGES}
        for r in rows:
            for s in STAGES:
                if s == "denoise_per_step_s":
                    d = r["denoise_s"]
                    columns[s].append(d / r["steps"] if d is not None and r["steps"] else None)
                else:
                    columns[s].append(r[s])
        return {"n": len(rows), "stages": {s: summarize(v) for s, v in columns.items()}}

    def list_slowest_jobs(
        self, batch_id: int | None = None, window: int = RECENT_WINDOW, limit: int = 10
    ) -> list[dict[str, Any]]:
        """The ``limit`` slowest succeeded attempts (by total seconds) among the last
        ``window``, with their job's size, steps and prompt."""
        recent = self._recent(
            AttemptStatus.SUCCEEDED.value,
            Attempt.id.label("attempt_id"),
            Attempt.job_id,
            Attempt.batch_id,
            Attempt.worker,
            Attempt.total_s,
            Attempt.denoise_s,
            Attempt.finished_at,
            window=window,
            batch_id=batch_id,
        )
        r = recent.subquery()
        # Pick the slowest first, then join: ten job lookups rather than ``window``.
        top = select(r).order_by(r.c.total_s.desc()).limit(limit).subquery()
        stmt = (
            select(top, Job.steps, Job.width, Job.height, Job.model, Job.prompt)
            .join(Job, Job.id == top.c.job_id)
            .order_by(top.c.total_s.desc())
        )
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(stmt).mappings()]

    # -- failures and the quality gate -----------------------------------------------------------

    def group_failures(
        self, batch_id: int | None = None, window: int = RECENT_WINDOW, examples: int = 5
    ) -> list[dict[str, Any]]:
        """Failed and lost attempts among the last ``window`` of each, grouped by error text,
        most frequent first: attempts, lost, distinct jobs, workers, last seen, and the ids of
        the latest ``examples`` jobs. Grouped in SQL: a window holds thousands of rows, the
        answer a handful."""
        stmt = FAILURE_GROUPS.format(batch="" if batch_id is None else "AND batch_id = :batch")
        params = {"window": window, "examples": examples, "batch": batch_id}
        with self.engine.connect() as conn:
            rows = conn.execute(text(stmt), params).all()
        out = []
        for key, attempts, lost, jobs, last_seen, workers, pairs in rows:
            latest = sorted((tuple(map(int, p.split(":"))) for p in pairs.split(",")), reverse=True)
            out.append(
                {
                    "error": key,
                    "attempts": attempts,
                    "lost": lost,
                    "jobs": jobs,
                    "workers": sorted(w for w in (workers or "").split(",") if w),
                    "last_seen": last_seen,
                    "job_ids": [job_id for _last, job_id in latest],
                }
            )
        return out

    def list_failed_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        """The most recently failed jobs, newest first."""
        stmt = (
            select(
                Job.id,
                Job.batch_id,
                Job.prompt,
                Job.attempts,
                Job.max_attempts,
                Job.last_error,
                Job.finished_at,
            )
            .where(Job.status == JobStatus.FAILED.value)
            .order_by(Job.finished_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def list_failed_job_ids(
        self, error: str | None = None, batch_id: int | None = None
    ) -> list[int]:
        """Failed jobs (of one batch), only those whose last error groups under ``error``
        when given: what the dashboard's retry buttons retry. Reads every such job: an
        action's query, not a dashboard view's."""
        stmt = select(Job.id, Job.last_error).where(Job.status == JobStatus.FAILED.value)
        if batch_id is not None:
            stmt = stmt.where(Job.batch_id == batch_id)
        with self.engine.connect() as conn:
            return [jid for jid, e in conn.execute(stmt) if error is None or error_key(e) == error]

    def summarize_unpublished(
        self, batch_id: int | None = None, examples: int = 5
    ) -> dict[str, Any]:
        """Succeeded jobs whose image is not in place yet: ``count`` (a process killed between
        commit and publish, soon recovered, counts too), ``blocked`` (those a publish failed
        for: the folder cannot be written) and the first ``examples`` of these: id batch_id
        output_path error next_try_at."""
        waiting = (Job.status == JobStatus.SUCCEEDED.value) & Job.published_at.is_(None)
        if batch_id is not None:
            waiting = waiting & (Job.batch_id == batch_id)
        blocked = waiting & Job.last_error.is_not(None)
        with self.engine.connect() as conn:
            count, n_blocked = conn.execute(
                select(func.count(), func.count(Job.last_error)).where(waiting)
            ).one()
            rows = conn.execute(
                select(Job.id, Job.batch_id, Job.output_path, Job.last_error, Job.not_before)
                .where(blocked)
                .order_by(Job.id)
                .limit(examples)
            ).all()
        return {
            "count": int(count),
            "blocked": int(n_blocked),
            "examples": [
                {
                    "id": r.id,
                    "batch_id": r.batch_id,
                    "output_path": r.output_path,
                    "error": r.last_error,
                    "next_try_at": r.not_before,
                }
                for r in rows
            ],
        }

    def summarize_quality(self, batch_id: int | None = None) -> list[dict[str, Any]]:
        """Each batch with jobs under a quality gate: ``gated`` (such jobs), ``judged`` (those
        with a verdict), ``passed`` (succeeded: their image reached the gate),
        ``failed_gate`` (failed because no seed did), ``mean_score`` (of the images kept) and
        the gates asked for (``min_score_low`` .. ``min_score_high``). Reads gated jobs only,
        through their partial index: nothing at all for batches without a gate."""
        failed_gate = (Job.status == JobStatus.FAILED.value) & Job.last_error.startswith(
            GATE_ERROR_PREFIX, autoescape=True
        )
        stmt = (
            select(
                Job.batch_id,
                func.count().label("gated"),
                func.sum(case((Job.status == JobStatus.SUCCEEDED.value, 1), else_=0)).label(
                    "passed"
                ),
                func.sum(case((failed_gate, 1), else_=0)).label("failed_gate"),
                func.avg(case((Job.status == JobStatus.SUCCEEDED.value, Job.score))).label(
                    "mean_score"
                ),
                func.min(Job.min_score).label("min_score_low"),
                func.max(Job.min_score).label("min_score_high"),
            )
            .where(Job.min_score.is_not(None))
            .where(Job.status != JobStatus.LOADING.value)
            .group_by(Job.batch_id)
            .order_by(Job.batch_id)
        )
        if batch_id is not None:
            stmt = stmt.where(Job.batch_id == batch_id)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(stmt).mappings()]
        for r in rows:
            r["passed"] = int(r["passed"] or 0)
            r["failed_gate"] = int(r["failed_gate"] or 0)
            r["judged"] = r["passed"] + r["failed_gate"]
        return rows

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
