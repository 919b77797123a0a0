"""The read model's reports: the fleet (workers, their stats, the coordinator, dead letters),
throughput and stage timings, failures and the quality gate: what ``status``, the dashboard and
its JSON API summarise. ``reads.ReadModel`` inherits them; nothing here writes.

Every report reads a bounded window of recent work through an index (the last N attempts by id,
or the attempts finished in the last minutes), so each costs the same at a million jobs as at a
hundred; percentiles are computed in Python over that window (``reports``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, select, text

from contract.job import GATE_ERROR_PREFIX
from contract.status import AttemptStatus, JobStatus
from orchestrator.models import (
    Attempt,
    CoordinatorLease,
    DeadLetter,
    Job,
    Worker,
)
from orchestrator.store.base import (
    TIMING_COLUMNS,
    TIMING_WINDOW,
    StoreBase,
    chunks,
)
from orchestrator.store.reports import (
    FAILED_ATTEMPTS,
    RECENT_WINDOW,
    STAGES,
    THROUGHPUT_WINDOW_S,
    error_key,
    liveness,
    summarize,
)
from orchestrator.store.sql import FAILURE_GROUPS, THROUGHPUT


class ReportReads(StoreBase):
    """The reports of the job database (see the module's docstring)."""

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
