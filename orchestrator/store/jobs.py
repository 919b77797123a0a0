"""Submitting manifests, the queries users ask, and their actions on jobs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, delete, func, insert, select, update

from orchestrator.errors import JobNotFound, UsageError
from orchestrator.manifest import Manifest
from orchestrator.models import (
    ACTIVE_STATUSES,
    Attempt,
    AttemptStatus,
    Batch,
    Job,
    JobCount,
    JobStatus,
)
from orchestrator.store.base import _CHUNK, TIMING_COLUMNS, TIMING_WINDOW, StoreBase, SubmitResult


class JobsMixin(StoreBase):
    _INSERT_COLUMNS = (
        "batch_id, line, image_index, fingerprint, status, priority, prompt, negative_prompt, "
        "seed, steps, guidance_scale, width, height, scheduler, model, quantization, tags, "
        "output_name, extra_json, attempts, max_attempts, created_at"
    )
    _INSERT_JOBS = (
        f"INSERT INTO jobs ({_INSERT_COLUMNS}) VALUES ({', '.join(['?'] * 22)}) "
        "ON CONFLICT (fingerprint) DO NOTHING"
    )

    def submit(
        self,
        manifest: Manifest,
        *,
        name: str,
        defaults: dict[str, Any],
        max_attempts: int,
    ) -> SubmitResult:
        """Insert a validated manifest's jobs in one transaction; known fingerprints are skipped."""
        now = time.time()
        pending = JobStatus.PENDING.value
        with self._tx(write=True) as conn:
            batch_id = conn.execute(
                insert(Batch)
                .values(
                    name=name,
                    manifest_path=manifest.path,
                    manifest_sha256=manifest.sha256,
                    rows=manifest.rows,
                    job_count=0,
                    duplicates=0,
                    defaults_json=json.dumps(defaults, sort_keys=True),
                    created_at=now,
                )
                .returning(Batch.id)
            ).scalar_one()
            rows = [
                (
                    batch_id,
                    s.line,
                    s.image_index,
                    s.fingerprint(),
                    pending,
                    s.priority,
                    s.prompt,
                    s.negative_prompt,
                    s.seed,
                    s.steps,
                    s.guidance_scale,
                    s.width,
                    s.height,
                    s.scheduler,
                    s.model,
                    s.quantization,
                    s.tags,
                    s.output_name,
                    json.dumps(s.extra, ensure_ascii=False) if s.extra else None,
                    0,
                    max_attempts,
                    now,
                )
                for s in manifest.jobs
            ]
            # The driver's executemany directly: SQLAlchemy's per-row parameter processing
            # would double the time of a 100k-row manifest.
            added = conn.exec_driver_sql(self._INSERT_JOBS, rows).rowcount if rows else 0
            duplicates = len(rows) - added
            if added == 0:
                # Nothing new: leave no empty batch behind.
                conn.execute(delete(Batch).where(Batch.id == batch_id))
                return SubmitResult(None, manifest.rows, 0, duplicates)
            conn.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(job_count=added, duplicates=duplicates)
            )
        return SubmitResult(batch_id, manifest.rows, added, duplicates)

    def job_ids_for(self, fingerprints: Sequence[str]) -> list[int]:
        ids: list[int] = []
        with self._tx(write=False) as conn:
            for i in range(0, len(fingerprints), _CHUNK):
                chunk = fingerprints[i : i + _CHUNK]
                ids.extend(conn.execute(select(Job.id).where(Job.fingerprint.in_(chunk))).scalars())
        return sorted(ids)

    # -- queries -----------------------------------------------------------------------------

    def counts(self, batch_id: int | None = None) -> dict[str, int]:
        """Jobs by status (every status present, zeros included), from the trigger-kept table."""
        stmt = select(JobCount.status, func.sum(JobCount.n)).group_by(JobCount.status)
        if batch_id is not None:
            stmt = stmt.where(JobCount.batch_id == batch_id)
        out = {s.value: 0 for s in JobStatus}
        with self.engine.connect() as conn:
            for status, n in conn.execute(stmt):
                out[status] = int(n or 0)
        return out

    def counts_for_jobs(self, job_ids: Sequence[int]) -> dict[str, int]:
        out = {s.value: 0 for s in JobStatus}
        with self._tx(write=False) as conn:
            for i in range(0, len(job_ids), _CHUNK):
                chunk = job_ids[i : i + _CHUNK]
                for status, n in conn.execute(
                    select(Job.status, func.count()).where(Job.id.in_(chunk)).group_by(Job.status)
                ):
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

    def active_batches(self) -> set[int]:
        """Batches with a job pending, queued or running."""
        stmt = (
            select(JobCount.batch_id)
            .where(JobCount.status.in_([s.value for s in ACTIVE_STATUSES]))
            .where(JobCount.n > 0)
            .distinct()
        )
        with self.engine.connect() as conn:
            return set(conn.execute(stmt).scalars())

    def batches(self) -> list[dict[str, Any]]:
        with self._tx(write=False) as conn:
            batches = [dict(r) for r in conn.execute(select(Batch).order_by(Batch.id)).mappings()]
            per: dict[int, dict[str, int]] = {}
            for bid, status, n in conn.execute(
                select(JobCount.batch_id, JobCount.status, JobCount.n)
            ):
                per.setdefault(bid, {})[status] = n
        for b in batches:
            b["counts"] = {s.value: per.get(b["id"], {}).get(s.value, 0) for s in JobStatus}
        return batches

    def stage_timings(
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

    def get_job(self, job_id: int) -> dict[str, Any]:
        with self._tx(write=False) as conn:
            job = conn.execute(select(Job).where(Job.id == job_id)).mappings().first()
            if job is None:
                raise JobNotFound(f"no job with id {job_id}")
            out = dict(job)
            out["attempt_rows"] = [
                dict(r)
                for r in conn.execute(
                    select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id)
                ).mappings()
            ]
        return out

    def list_jobs(
        self, *, batch_id: int | None = None, status: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        stmt = select(Job).order_by(Job.id).limit(limit)
        if batch_id is not None:
            stmt = stmt.where(Job.batch_id == batch_id)
        if status is not None:
            stmt = stmt.where(Job.status == status)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    # -- user actions ------------------------------------------------------------------------

    def _select_targets(
        self, job_ids: Sequence[int], batch_id: int | None, statuses: Sequence[str]
    ) -> Any:
        if not job_ids and batch_id is None:
            raise UsageError("name job ids, or --batch")
        cond: ColumnElement[bool] = Job.status.in_(statuses)
        if job_ids:
            cond = cond & Job.id.in_(bindparam("ids", expanding=True))
        if batch_id is not None:
            cond = cond & (Job.batch_id == batch_id)
        return cond

    def _check_exist(self, conn: Connection, job_ids: Sequence[int]) -> None:
        if not job_ids:
            return
        found = set(conn.execute(select(Job.id).where(Job.id.in_(list(job_ids)))).scalars())
        missing = sorted(set(job_ids) - found)
        if missing:
            raise JobNotFound("no job with id " + ", ".join(map(str, missing)))

    def retry(self, job_ids: Sequence[int] = (), *, batch_id: int | None = None) -> int:
        """Failed or cancelled jobs go back to pending with a fresh attempt budget."""
        cond = self._select_targets(
            job_ids, batch_id, [JobStatus.FAILED.value, JobStatus.CANCELLED.value]
        )
        with self._tx(write=True) as conn:
            self._check_exist(conn, job_ids)
            return conn.execute(
                update(Job)
                .where(cond)
                .values(
                    status=JobStatus.PENDING.value,
                    attempts=0,
                    not_before=None,
                    finished_at=None,
                ),
                {"ids": list(job_ids)} if job_ids else {},
            ).rowcount

    def cancel(self, job_ids: Sequence[int] = (), *, batch_id: int | None = None) -> int:
        """Pending, queued and running jobs become cancelled; a running one's worker stops at
        its next lease renewal and its result, if any, is dropped."""
        cond = self._select_targets(job_ids, batch_id, [s.value for s in ACTIVE_STATUSES])
        with self._tx(write=True) as conn:
            self._check_exist(conn, job_ids)
            return conn.execute(
                update(Job)
                .where(cond)
                .values(
                    status=JobStatus.CANCELLED.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=time.time(),
                ),
                {"ids": list(job_ids)} if job_ids else {},
            ).rowcount

    def succeeded_for_export(self, batch_id: int | None = None) -> list[dict[str, Any]]:
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
        timings = ("text_encode_s", "denoise_s", "decode_s", "total_s")
        stmt = (
            select(*Job.__table__.columns, *(getattr(Attempt, c) for c in timings))
            .outerjoin(Attempt, Attempt.id == attempt_id)
            .where(Job.status == JobStatus.SUCCEEDED.value)
            .order_by(Job.id)
        )
        if batch_id is not None:
            stmt = stmt.where(Job.batch_id == batch_id)
        with self._tx(write=False) as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]
