"""JobStore: every SQL statement of the orchestrator, so transaction rules live in one place.

The store runs its own transactions: ``BEGIN IMMEDIATE`` for writes (writers queue on SQLite's
busy timeout rather than failing mid-transaction) and ``BEGIN`` for reads that need one snapshot.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)

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

JOB_PAYLOAD_COLUMNS = (
    "id",
    "batch_id",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance_scale",
    "width",
    "height",
    "scheduler",
    "model",
    "quantization",
    "output_name",
    "line",
    "image_index",
    "attempts",
)
TIMING_COLUMNS = (
    "queue_wait_s",
    "load_s",
    "text_encode_s",
    "denoise_s",
    "decode_s",
    "encode_s",
    "total_s",
    "peak_mem_mb",
)
# What a worker reports; the queue wait is the store's own measure, set at claim time.
RESULT_COLUMNS = ("backend", "device", "dtype", "torch_threads", *TIMING_COLUMNS[1:])
_CHUNK = 500
TIMING_WINDOW = 1000


@dataclass(frozen=True)
class SubmitResult:
    batch_id: int | None
    rows: int
    added: int
    duplicates: int


@dataclass(frozen=True)
class WorkerIdentity:
    name: str
    host: str
    pid: int


@dataclass(frozen=True)
class Claim:
    """A job a worker holds the lease on, and its attempt row."""

    job: dict[str, Any]
    attempt_id: int
    lease_owner: str  # the worker's name plus a token unique to this claim


def backoff_seconds(attempt: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Delay before retry ``attempt + 1``: exponential, capped."""
    return float(min(cap, base ** max(0, attempt)))


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")

    # -- submission --------------------------------------------------------------------------

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

    # -- the worker's side -------------------------------------------------------------------

    _CLAIM_SQL = text(
        """
        UPDATE jobs
           SET status = 'running', lease_owner = :owner, lease_expires_at = :expires,
               attempts = attempts + 1, started_at = COALESCE(started_at, :now)
         WHERE status = 'pending'
           AND id = COALESCE(
               (SELECT id FROM jobs
                 WHERE status = 'pending' AND model = :model
                   AND (not_before IS NULL OR not_before <= :now)
                   AND priority = (SELECT priority FROM jobs
                                    WHERE status = 'pending'
                                      AND (not_before IS NULL OR not_before <= :now)
                                    ORDER BY priority DESC, id LIMIT 1)
                 ORDER BY priority DESC, id LIMIT 1),
               (SELECT id FROM jobs
                 WHERE status = 'pending' AND (not_before IS NULL OR not_before <= :now)
                 ORDER BY priority DESC, id LIMIT 1))
        RETURNING {columns}, created_at, not_before
        """.format(columns=", ".join(JOB_PAYLOAD_COLUMNS))
    )

    def claim(
        self, worker: WorkerIdentity, *, lease_seconds: float, prefer_model: str | None = None
    ) -> Claim | None:
        """Take the next pending job atomically: highest priority, then oldest; among equals,
        one for the model this worker has loaded. Expired leases are recovered first."""
        now = time.time()
        self.recover_expired(now)
        owner = f"{worker.name}/{secrets.token_hex(4)}"
        with self._tx(write=True) as conn:
            row = conn.execute(
                self._CLAIM_SQL,
                {
                    "owner": owner,
                    "expires": now + lease_seconds,
                    "now": now,
                    "model": prefer_model or "",
                },
            ).first()
            if row is None:
                return None
            job = {c: row._mapping[c] for c in JOB_PAYLOAD_COLUMNS}
            # Raw RETURNING rows skip SQLAlchemy's types; SQLite hands back 7.0 as 7.
            job["guidance_scale"] = float(job["guidance_scale"])
            attempt_id = conn.execute(
                insert(Attempt)
                .values(
                    job_id=row.id,
                    batch_id=job["batch_id"],
                    number=job["attempts"],
                    status=AttemptStatus.RUNNING.value,
                    worker=worker.name,
                    host=worker.host,
                    pid=worker.pid,
                    started_at=now,
                    queue_wait_s=now - (row.not_before or row.created_at),
                )
                .returning(Attempt.id)
            ).scalar_one()
        return Claim(job=job, attempt_id=attempt_id, lease_owner=owner)

    def renew(self, claim: Claim, lease_seconds: float) -> bool:
        """Extend the lease; False when it is no longer this worker's (expired and taken,
        cancelled, or finished), which tells the worker to stop."""
        with self._tx(write=True) as conn:
            n = conn.execute(
                self._owned(claim).values(lease_expires_at=time.time() + lease_seconds)
            ).rowcount
        return n == 1

    @staticmethod
    def _owned(claim: Claim) -> Any:
        """An UPDATE of the job that matches only while this claim still holds it."""
        return (
            update(Job)
            .where(Job.id == claim.job["id"])
            .where(Job.status == JobStatus.RUNNING.value)
            .where(Job.lease_owner == claim.lease_owner)
        )

    def _finish_attempt(
        self, conn: Connection, claim: Claim, status: AttemptStatus, **values: Any
    ) -> None:
        # Only a running attempt: one already marked lost keeps that verdict.
        conn.execute(
            update(Attempt)
            .where(Attempt.id == claim.attempt_id)
            .where(Attempt.status == AttemptStatus.RUNNING.value)
            .values(status=status.value, finished_at=time.time(), **values)
        )

    def complete(self, claim: Claim, output_path: str, result: dict[str, Any]) -> bool:
        """Record success once. A result for a job this claim no longer holds is dropped
        (its attempt is marked superseded) and False is returned."""
        now = time.time()
        fields = {k: result.get(k) for k in RESULT_COLUMNS}
        fields["versions_json"] = json.dumps(result.get("versions", {}), sort_keys=True)
        with self._tx(write=True) as conn:
            n = conn.execute(
                self._owned(claim).values(
                    status=JobStatus.SUCCEEDED.value,
                    finished_at=now,
                    output_path=output_path,
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=None,
                )
            ).rowcount
            status = AttemptStatus.SUCCEEDED if n == 1 else AttemptStatus.SUPERSEDED
            self._finish_attempt(conn, claim, status, **fields)
        return n == 1

    def fail(self, claim: Claim, error: str, *, retryable: bool = True) -> str | None:
        """Record a failed attempt; the job goes back to pending after a backoff while
        attempts remain, else to failed. Returns the job's new status (None if not held)."""
        now = time.time()
        with self._tx(write=True) as conn:
            row = conn.execute(
                select(Job.attempts, Job.max_attempts).where(Job.id == claim.job["id"])
            ).one()
            again = retryable and row.attempts < row.max_attempts
            status = JobStatus.PENDING if again else JobStatus.FAILED
            n = conn.execute(
                self._owned(claim).values(
                    status=status.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=error,
                    not_before=now + backoff_seconds(row.attempts) if again else None,
                    finished_at=None if again else now,
                )
            ).rowcount
            self._finish_attempt(
                conn, claim, AttemptStatus.FAILED if n else AttemptStatus.SUPERSEDED, error=error
            )
        return status.value if n else None

    def release(self, claim: Claim, reason: str = "worker shut down") -> bool:
        """Give the job back untouched (this attempt does not count against its limit)."""
        with self._tx(write=True) as conn:
            n = conn.execute(
                self._owned(claim).values(
                    status=JobStatus.PENDING.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=Job.attempts - 1,
                )
            ).rowcount
            self._finish_attempt(
                conn, claim, AttemptStatus.RELEASED if n else AttemptStatus.SUPERSEDED, error=reason
            )
        return n == 1

    def recover_expired(self, now: float | None = None) -> int:
        """Jobs whose lease ran out (their worker died) go back to pending, or to failed when
        out of attempts; their attempts are marked lost."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            # Cheap unlocked look first: nearly always there is nothing to do.
            expired = conn.execute(
                select(Job.id)
                .where(Job.status == JobStatus.RUNNING.value)
                .where(Job.lease_expires_at < now)
                .limit(1)
            ).first()
        if expired is None:
            return 0
        with self._tx(write=True) as conn:
            rows = conn.execute(
                select(Job.id, Job.attempts, Job.max_attempts, Job.lease_owner)
                .where(Job.status == JobStatus.RUNNING.value)
                .where(Job.lease_expires_at < now)
            ).all()
            for r in rows:
                error = f"lease expired: worker {r.lease_owner} stopped renewing it"
                again = r.attempts < r.max_attempts
                conn.execute(
                    update(Job)
                    .where(Job.id == r.id)
                    .values(
                        status=(JobStatus.PENDING if again else JobStatus.FAILED).value,
                        lease_owner=None,
                        lease_expires_at=None,
                        last_error=error,
                        finished_at=None if again else now,
                    )
                )
                conn.execute(
                    update(Attempt)
                    .where(Attempt.job_id == r.id)
                    .where(Attempt.status == AttemptStatus.RUNNING.value)
                    .values(status=AttemptStatus.LOST.value, finished_at=now, error=error)
                )
        return len(rows)

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
        recent = (
            select(*(getattr(Attempt, c) for c in TIMING_COLUMNS))
            .where(Attempt.status == AttemptStatus.SUCCEEDED.value)
            .order_by(Attempt.id.desc())
            .limit(window)
        )
        if batch_id is not None:
            recent = recent.where(Attempt.batch_id == batch_id)
        sub = recent.subquery()
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
