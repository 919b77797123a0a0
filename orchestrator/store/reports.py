"""Reports for ``orchestrate status``, the dashboard and its JSON API.

Every query reads a bounded window of recent work through an index (the last N attempts by
id, or the attempts finished in the last minutes), so each costs the same at a million jobs
as at a hundred; percentiles are computed in Python over that window.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import case, func, select, text
from sqlalchemy.orm import aliased

from contract.job import GATE_ERROR_PREFIX
from contract.status import VISIBLE_STATUSES, AttemptStatus, JobStatus
from orchestrator.models import Attempt, Job, Worker
from orchestrator.store.base import OPEN_ATTEMPTS, TIMING_WINDOW, StoreBase, chunks
from orchestrator.store.sql import FAILURE_GROUPS, NO_ERROR_TEXT, THROUGHPUT

THROUGHPUT_WINDOW_S = 600.0
RECENT_WINDOW = 10_000
# The gallery's text and tag search reads at most this many images (newest first), each a
# LIKE: a search costs the same at a million jobs as at a hundred, and says what it read.
SEARCH_WINDOW = 50_000
PROMPT_EXCERPT = 300  # characters of a prompt a job list carries (a prompt may hold 10,000)
# Stages whose p50/p95 the reports give; denoise per step comes from denoise_s / steps.
STAGES = (
    "queue_wait_s",
    "load_s",
    "text_encode_s",
    "denoise_s",
    "denoise_per_step_s",
    "decode_s",
    "encode_s",
    "total_s",
)
FAILED_ATTEMPTS = (AttemptStatus.FAILED.value, AttemptStatus.LOST.value)
# A local lease owner is "<worker>/<claim token>": without the token, one dead worker's lost
# jobs share one error text instead of one each. The same rule in Python and in SQL.
_LEASE_TOKEN = re.compile(r"^(lease expired: worker .+)/[0-9a-f]{8}( stopped renewing it)$")
# What the gallery shows of a succeeded job.
_IMAGE_COLUMNS = (
    Job.id,
    Job.batch_id,
    Job.prompt,
    Job.negative_prompt,
    Job.seed,
    Job.steps,
    Job.guidance_scale,
    Job.width,
    Job.height,
    Job.scheduler,
    Job.model,
    Job.finished_at,
    Job.output_path,
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, interpolating between closest ranks."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Count, mean, p50 and p95 of the values that are not None."""
    v = [float(x) for x in values if x is not None]
    return {
        "n": len(v),
        "mean": sum(v) / len(v) if v else None,
        "p50": percentile(v, 50),
        "p95": percentile(v, 95),
    }


def error_key(error: str | None) -> str:
    """The text failures are grouped by."""
    if not error:
        return NO_ERROR_TEXT
    return _LEASE_TOKEN.sub(r"\1\2", error)


def _liveness(w: dict[str, Any], job: dict[str, Any] | None) -> dict[str, Any]:
    """What a worker's row says about its liveness, with its current job's lease.

    A local worker writes its row when its state changes, so ``last_seen`` of one busy on a
    long job is as old as the job; what it does meanwhile is renew the job's lease, so a
    lease of its that has not expired is the fresher sign of life. An RQ worker's row is
    refreshed with each heartbeat. ``holds_job``: the job is still queued or running under
    this worker (its open attempt or its lease is the worker's)."""
    busy = w["state"] in ("busy", "loading") and bool(w["current_job"])
    holds = False
    since = lease = None
    status = None
    if busy and job is not None:
        status = job["status"]
        mine = job["lease_owner"] is not None and job["lease_owner"].startswith(w["name"] + "/")
        holds = status in (JobStatus.QUEUED.value, JobStatus.RUNNING.value) and (
            mine or w["name"] in job["attempts"]
        )
        since = job["attempts"].get(w["name"])
        lease = job["lease_expires_at"] if holds and mine else None
    return {
        "busy_job": w["current_job"] if busy else None,
        "busy_since": since,
        "holds_job": holds,
        "job_status": status,
        "lease_expires_at": lease,
    }


class ReportsMixin(StoreBase):
    """What status, the dashboard and its API read: recent throughput, stage percentiles,
    workers, failures, slow jobs and images."""

    def throughput(
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

    def stage_percentiles(
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

    def worker_stats(
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
            w.update(_liveness(w, current.get(w["current_job"] or 0)))
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

    def failure_groups(
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

    def unpublished_summary(self, batch_id: int | None = None, examples: int = 5) -> dict[str, Any]:
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

    def quality(self, batch_id: int | None = None) -> list[dict[str, Any]]:
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

    def failed_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
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

    def failed_job_ids(self, error: str | None = None, batch_id: int | None = None) -> list[int]:
        """Failed jobs (of one batch), only those whose last error groups under ``error``
        when given: what the dashboard's retry buttons retry. Reads every such job: an
        action's query, not a dashboard view's."""
        stmt = select(Job.id, Job.last_error).where(Job.status == JobStatus.FAILED.value)
        if batch_id is not None:
            stmt = stmt.where(Job.batch_id == batch_id)
        with self.engine.connect() as conn:
            return [jid for jid, e in conn.execute(stmt) if error is None or error_key(e) == error]

    def slowest_jobs(
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

    def recent_images(self, limit: int = 24, offset: int = 0) -> list[dict[str, Any]]:
        """Succeeded jobs, most recently finished first, with what made their image."""
        stmt = (
            select(*_IMAGE_COLUMNS)
            .where(Job.status == JobStatus.SUCCEEDED.value)
            .order_by(Job.finished_at.desc())
            .limit(limit)
            .offset(offset)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def batch_jobs(
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
        How many jobs match is ``counts(batch_id)`` (kept by triggers), not a count here."""
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

    def gallery_images(
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
        columns = (*_IMAGE_COLUMNS, Job.tags)
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

    def image_file(self, job_id: int) -> str | None:
        """The output path of a succeeded job: the only files the dashboard serves."""
        stmt = (
            select(Job.output_path)
            .where(Job.id == job_id)
            .where(Job.status == JobStatus.SUCCEEDED.value)
        )
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()
