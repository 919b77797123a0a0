"""A job's lifecycle under a lease: claims, renewals, results, failures, lost workers.

Every write of a lease holder goes through ``_owned``: it matches only while the holder's
token is still the job's ``lease_owner``. A result is recorded in two steps: the commit that
makes the job succeeded records the image's sha256 (the file is already staged under the
attempt's own name), then the file is published and ``published_at`` set (see
``orchestrator.results``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from contract.job import BATCH_FIELDS, GATE_ERROR_PREFIX, GATE_FIELDS, QUALITY_RESULT_FIELDS
from contract.status import AttemptStatus, JobStatus
from orchestrator.models import ATTEMPTS, JOBS, Attempt, Job
from orchestrator.store.base import (
    HELD_STATUSES,
    JOB_PAYLOAD_COLUMNS,
    OPEN_ATTEMPTS,
    RESULT_COLUMNS,
    Claim,
    WorkerIdentity,
    backoff_seconds,
    chunks,
)
from orchestrator.store.reads import ReadModel, batch_runs, queue_runs
from orchestrator.store.sql import CLAIM, COMPANIONS, PICK_ONE, TAKE_ID

PUBLISH_BACKOFF_CAP_S = 300.0  # the longest wait between tries to publish a committed image


def _gate_rounds(job_id: Any) -> Any:
    """How many attempts of the job failed its quality gate (a scalar subquery): the round
    whose seeds its next attempt tries. Attempts that never judged an image (released, lost,
    interrupted, taken back from a pause) count for nothing, so they never move its seeds on."""
    return (
        select(func.count())
        .where(Attempt.job_id == job_id)
        .where(Attempt.status == AttemptStatus.FAILED.value)
        .where(Attempt.error.startswith(GATE_ERROR_PREFIX, autoescape=True))
        .scalar_subquery()
    )


def _payload(row: Any, attempt: int, gate_round: int = 0) -> dict[str, Any]:
    job = {c: row[c] for c in JOB_PAYLOAD_COLUMNS}
    # Raw RETURNING rows skip SQLAlchemy's types; SQLite hands back 7.0 as 7.
    job["guidance_scale"] = float(job["guidance_scale"])
    job["extra"] = json.loads(job.pop("extra_json") or "{}")
    # A job without a quality gate is sent as before the gate existed (an older worker
    # takes it); a gated one carries its gate, and only a worker that knows it takes that.
    for name in GATE_FIELDS:
        if job[name] is None:
            del job[name]
    if "min_score" in job:
        job["min_score"] = float(job["min_score"])
        job["gate_round"] = gate_round
    job["attempt"] = attempt
    return job


def _scores_json(scores: Any) -> str | None:
    """An attempt's tried ``[seed, score]`` pairs as stored (None: not a gated attempt)."""
    return json.dumps([[int(s), float(v)] for s, v in scores]) if scores else None


class LeasesMixin(ReadModel):
    # -- the worker's side -------------------------------------------------------------------

    # The claim's statements (``sql``: why each is shaped so), as attributes so that a test
    # can put a stale pick in.
    _CLAIM_SQL = CLAIM
    _PICK_SQL = PICK_ONE
    _TAKE_ID_SQL = TAKE_ID
    PICK_TRIES = 5

    def claim(
        self, worker: WorkerIdentity, *, lease_seconds: float, prefer_model: str | None = None
    ) -> Claim | None:
        """Take the next pending job atomically: highest priority, then oldest; among equals,
        one for the model this worker has loaded. Expired leases are recovered first."""
        now = time.time()
        self.recover_expired(now)
        owner = f"{worker.name}/{secrets.token_hex(4)}"
        params = {
            "owner": owner,
            "expires": now + lease_seconds,
            "now": now,
            "model": prefer_model or "",
        }
        if self.has_pauses():
            for _ in range(self.PICK_TRIES):
                with self.engine.connect() as conn:
                    picked = conn.execute(self._PICK_SQL, params).scalar()
                if picked is None:
                    return None
                with self._tx(write=True) as conn:
                    row = conn.execute(self._TAKE_ID_SQL, {**params, "id": picked}).first()
                    if row is not None:
                        return self._open_attempt(conn, row, worker, owner, now)
            # another worker took each pick first: pick and take in one statement
        with self._tx(write=True) as conn:
            row = conn.execute(self._CLAIM_SQL, params).first()
            if row is None:
                return None
            return self._open_attempt(conn, row, worker, owner, now)

    # Jobs that may share the first claim's pipeline call (``sql.COMPANIONS``).
    _COMPANIONS_SQL = COMPANIONS

    def claim_companions(
        self, first: Claim, worker: WorkerIdentity, *, lease_seconds: float, limit: int
    ) -> list[Claim]:
        """Up to ``limit`` more pending jobs that can share ``first``'s pipeline call, each
        taken under its own lease and attempt, in one write transaction (so a pause
        committed before it stops them as it stops a claim)."""
        job = first.job
        if limit <= 0 or job.get("min_score") is not None:
            return []
        now = time.time()
        params = {
            "model": job["model"],
            "quantization": job.get("quantization", "fp16"),
            **{c: job[c] for c in BATCH_FIELDS},
            "first": job["id"],
            "now": now,
            "limit": limit,
            "expires": now + lease_seconds,
        }
        claims: list[Claim] = []
        with self._tx(write=True) as conn:
            for (job_id,) in conn.execute(self._COMPANIONS_SQL, params).all():
                owner = f"{worker.name}/{secrets.token_hex(4)}"
                row = conn.execute(
                    self._TAKE_ID_SQL, {**params, "owner": owner, "id": job_id}
                ).first()
                if row is not None:
                    claims.append(self._open_attempt(conn, row, worker, owner, now))
        return claims

    def _open_attempt(
        self, conn: Connection, row: Any, worker: WorkerIdentity, owner: str, now: float
    ) -> Claim:
        number = self._next_attempt_number(conn, row.id)
        job = _payload(row._mapping, number, self._gate_round(conn, row.id, row.min_score))
        attempt_id = conn.execute(
            insert(ATTEMPTS)
            .values(
                job_id=row.id,
                batch_id=job["batch_id"],
                number=number,
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

    @staticmethod
    def _gate_round(conn: Connection, job_id: int, min_score: float | None) -> int:
        """The quality-gate round of a job's next attempt (0 for a job without a gate)."""
        if min_score is None:
            return 0
        return int(conn.execute(select(_gate_rounds(job_id))).scalar() or 0)

    def renew(self, claim: Claim, lease_seconds: float, *, busy_timeout_s: float = 30.0) -> bool:
        """Extend the lease; False when it is no longer this worker's (expired and taken,
        cancelled, or finished), which tells the worker to stop. Waits at most
        ``busy_timeout_s`` for the write lock (then raises DatabaseBusy)."""
        with self._tx(write=True, busy_timeout_s=busy_timeout_s) as conn:
            n = conn.execute(
                self._owned(claim).values(lease_expires_at=time.time() + lease_seconds)
            ).rowcount
        return n == 1

    def complete(
        self,
        claim: Claim,
        output_path: str,
        sha256: str,
        result: dict[str, Any],
        *,
        staged_path: str | None = None,
    ) -> bool:
        """Record success once, with the sha256 of the image staged for it and where it is
        staged; the file is not published yet (``published_at`` stays NULL until it is). A
        result for a job this claim no longer holds is dropped (its attempt is marked
        superseded) and False is returned: then the caller must not publish."""
        now = time.time()
        fields = {k: result.get(k) for k in RESULT_COLUMNS}
        fields["versions_json"] = json.dumps(result.get("versions", {}), sort_keys=True)
        # A gated job's verdict, under the same fence as the success itself: a superseded
        # attempt's score never lands on the job.
        quality = {k: result.get(k) for k in QUALITY_RESULT_FIELDS}
        with self._tx(write=True) as conn:
            n = conn.execute(
                self._owned(claim).values(
                    status=JobStatus.SUCCEEDED.value,
                    finished_at=now,
                    output_path=output_path,
                    output_sha256=sha256,
                    published_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=None,
                    **quality,
                )
            ).rowcount
            status = AttemptStatus.SUCCEEDED if n == 1 else AttemptStatus.SUPERSEDED
            self._finish_attempt(
                conn,
                claim,
                status,
                output_sha256=sha256,
                staged_path=staged_path,
                scores_json=_scores_json(result.get("scores")),
                **fields,
            )
        return n == 1

    def mark_published(self, job_id: int, sha256: str) -> bool:
        """The job's image is in place: set ``published_at`` (once), and forget why publishing
        it failed before."""
        with self._tx(write=True) as conn:
            return (
                conn.execute(
                    update(JOBS)
                    .where(Job.id == job_id)
                    .where(Job.status == JobStatus.SUCCEEDED.value)
                    .where(Job.output_sha256 == sha256)
                    .where(Job.published_at.is_(None))
                    .values(published_at=time.time(), last_error=None)
                ).rowcount
                == 1
            )

    def mark_publish_failed(
        self, job_id: int, sha256: str, error: str, *, now: float | None = None
    ) -> float | None:
        """A committed image could not be put in place: record why on the job, and when to try
        again (``not_before``: as long again as since the commit, 2 s to 5 min, so a folder
        that stays unwritable is tried less and less often). Returns that time (None if the
        job is no longer waiting to be published)."""
        now = time.time() if now is None else now
        with self._tx(write=True) as conn:
            committed = conn.execute(
                select(Job.finished_at)
                .where(Job.id == job_id)
                .where(Job.status == JobStatus.SUCCEEDED.value)
                .where(Job.output_sha256 == sha256)
                .where(Job.published_at.is_(None))
            ).first()
            if committed is None:
                return None
            retry_at = now + min(PUBLISH_BACKOFF_CAP_S, max(2.0, now - (committed[0] or now)))
            conn.execute(
                update(JOBS)
                .where(Job.id == job_id)
                .values(last_error=error[:2000], not_before=retry_at)
            )
        return retry_at

    def list_unpublished(
        self, limit: int = 1000, *, due: float | None = None
    ) -> list[dict[str, Any]]:
        """Succeeded jobs whose image is not yet in place, with the attempt that made it and
        where that attempt staged it (None for attempts older than migration 0009); with
        ``due``, only those whose next try (after a failed publish) is due by then."""
        made = Attempt.__table__.alias("made")
        succeeded = (
            select(func.max(Attempt.id))
            .where(Attempt.job_id == Job.id)
            .where(Attempt.status == AttemptStatus.SUCCEEDED.value)
            .correlate(Job)
            .scalar_subquery()
        )
        stmt = (
            select(
                Job.id,
                Job.output_path,
                Job.output_sha256,
                made.c.id.label("attempt_id"),
                made.c.staged_path,
            )
            .outerjoin(made, made.c.id == succeeded)
            .where(Job.status == JobStatus.SUCCEEDED.value)
            .where(Job.published_at.is_(None))
            .order_by(Job.id)
            .limit(limit)
        )
        if due is not None:
            stmt = stmt.where(Job.not_before.is_(None) | (Job.not_before <= due))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def find_publishable_attempts(self, attempt_ids: list[int]) -> dict[int, str | None]:
        """Of these attempts, those whose staged image may still be published: open ones
        (mapped to None: any of their writers' files may be the one), and succeeded ones
        whose job is not published yet (mapped to the file their commit recorded)."""
        keep: dict[int, str | None] = {}
        with self.engine.connect() as conn:
            for part in chunks(attempt_ids):
                rows = conn.execute(
                    select(
                        Attempt.id,
                        Attempt.status,
                        Attempt.staged_path,
                        Job.status,
                        Job.published_at,
                    )
                    .join(Job, Job.id == Attempt.job_id)
                    .where(Attempt.id.in_(part))
                ).all()
                for attempt_id, status, staged, job_status, published_at in rows:
                    if status in OPEN_ATTEMPTS:
                        keep[attempt_id] = None
                    elif (
                        status == AttemptStatus.SUCCEEDED.value
                        and job_status == JobStatus.SUCCEEDED.value
                        and published_at is None
                    ):
                        keep[attempt_id] = staged
        return keep

    def mark_image_lost(self, job_id: int, error: str, *, sha256: str | None = None) -> bool:
        """A succeeded job's image is gone or damaged: the job goes back to pending (a fresh
        attempt budget: not its fault) and its succeeded attempt is marked lost. With
        ``sha256``, only while that image is still unpublished (recovery found its staged
        bytes gone); without, whatever its state (``verify --repair`` found the file bad)."""
        cond = (Job.id == job_id) & (Job.status == JobStatus.SUCCEEDED.value)
        if sha256 is not None:
            cond = cond & (Job.output_sha256 == sha256) & Job.published_at.is_(None)
        with self._tx(write=True) as conn:
            n = conn.execute(
                update(JOBS)
                .where(cond)
                .values(
                    status=JobStatus.PENDING.value,
                    attempts=0,
                    output_path=None,
                    output_sha256=None,
                    published_at=None,
                    finished_at=None,
                    not_before=None,
                    last_error=error,
                    **dict.fromkeys(QUALITY_RESULT_FIELDS),  # judged again with the new image
                )
            ).rowcount
            if n:
                conn.execute(
                    update(ATTEMPTS)
                    .where(Attempt.job_id == job_id)
                    .where(Attempt.status == AttemptStatus.SUCCEEDED.value)
                    .values(status=AttemptStatus.LOST.value, error=error)
                )
        return n == 1

    def fail(
        self,
        claim: Claim,
        error: str,
        *,
        retryable: bool = True,
        scores: Sequence[Sequence[float]] | None = None,
    ) -> str | None:
        """Record a failed attempt (with the ``(seed, score)`` pairs it tried, when its quality
        gate failed); the job goes back to pending after a backoff while attempts remain,
        else to failed. Returns the job's new status (None if not held)."""
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
                conn,
                claim,
                AttemptStatus.FAILED if n else AttemptStatus.SUPERSEDED,
                error=error,
                scores_json=_scores_json(scores),
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
                    update(JOBS)
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
                    update(ATTEMPTS)
                    .where(Attempt.job_id == r.id)
                    .where(Attempt.status == AttemptStatus.RUNNING.value)
                    .values(status=AttemptStatus.LOST.value, finished_at=now, error=error)
                )
        return len(rows)

    def lose(self, claim: Claim, error: str, *, count_attempt: bool = True) -> str | None:
        """The holder of this claim is gone (a dead worker, or Redis forgot the job): back to
        pending, or to failed when out of attempts. A job that never started does not use up
        an attempt. Returns the new status (None if the claim no longer held the job)."""
        now = time.time()
        with self._tx(write=True) as conn:
            row = conn.execute(
                select(Job.attempts, Job.max_attempts).where(Job.id == claim.job["id"])
            ).one()
            again = not count_attempt or row.attempts < row.max_attempts
            status = JobStatus.PENDING if again else JobStatus.FAILED
            n = conn.execute(
                self._owned(claim).values(
                    status=status.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=error,
                    attempts=Job.attempts - (0 if count_attempt else 1),
                    finished_at=None if again else now,
                )
            ).rowcount
            if n:
                self._finish_attempt(conn, claim, AttemptStatus.LOST, error=error)
        return status.value if n else None

    def read_attempt_seconds(self, attempt_id: int) -> float | None:
        """How long an attempt has run: from its start (the database host's clock; for a
        dispatch no worker took, from the dispatch) to its end, or to now while it is open.
        None for an attempt there is no row of."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(Attempt.started_at, Attempt.finished_at).where(Attempt.id == attempt_id)
            ).first()
        if row is None:
            return None
        return max(0.0, (row.finished_at or time.time()) - row.started_at)

    # -- the Redis transport: the coordinator holds the lease for its dispatches ----------------
    # The coordinator calls these (and every other write) through a view of the store fenced by
    # its own coordinator lease (``StoreBase.fenced``), in the same transaction as the write.

    def dispatch(
        self,
        limit: int,
        owner_for: Callable[[dict[str, Any]], str],
    ) -> list[Claim]:
        """Move up to ``limit`` pending jobs to ``queued``, in claim order (priority, then age),
        each owned by the dispatch id ``owner_for(job)`` gives, with an open attempt; none of
        a paused batch, none at all while the queue is paused."""
        if limit <= 0:
            return []
        now = time.time()
        claims: list[Claim] = []
        pending = (
            (Job.status == JobStatus.PENDING.value)
            & ((Job.not_before.is_(None)) | (Job.not_before <= now))
            & queue_runs()
            & batch_runs()
        )
        picked = None
        if self.has_pauses():
            # walking past paused jobs is done without the write lock; the write re-checks
            with self.engine.connect() as conn:
                picked = list(
                    conn.execute(
                        select(Job.id)
                        .where(pending)
                        .order_by(Job.priority.desc(), Job.id)
                        .limit(limit)
                    ).scalars()
                )
            if not picked:
                return []
        with self._tx(write=True) as conn:
            rows = conn.execute(
                select(*(getattr(Job, c) for c in JOB_PAYLOAD_COLUMNS))
                .where(pending if picked is None else pending & Job.id.in_(picked))
                .order_by(Job.priority.desc(), Job.id)
                .limit(limit)
            ).mappings()
            for row in list(rows):
                number = self._next_attempt_number(conn, row["id"])
                job = _payload(row, number, self._gate_round(conn, row["id"], row["min_score"]))
                owner = owner_for(job)
                conn.execute(
                    update(JOBS)
                    .where(Job.id == job["id"])
                    .values(
                        status=JobStatus.QUEUED.value,
                        lease_owner=owner,
                        lease_expires_at=None,  # liveness is the coordinator's to judge
                        attempts=Job.attempts + 1,
                    )
                )
                attempt_id = conn.execute(
                    insert(ATTEMPTS)
                    .values(
                        job_id=job["id"],
                        batch_id=job["batch_id"],
                        number=number,
                        status=AttemptStatus.DISPATCHED.value,
                        worker="",
                        host="",
                        started_at=now,
                    )
                    .returning(Attempt.id)
                ).scalar_one()
                claims.append(Claim(job=job, attempt_id=attempt_id, lease_owner=owner))
        return claims

    def mark_started(self, claim: Claim, *, worker: str, host: str, pid: int | None) -> bool:
        """A worker picked the dispatched job up: the job is running, the attempt is its.
        Stamped with this host's clock (the database's), never the worker's."""
        now = time.time()
        with self._tx(write=True) as conn:
            row = conn.execute(
                select(Job.created_at, Job.not_before).where(Job.id == claim.job["id"])
            ).one()
            n = conn.execute(
                self._owned(claim).values(
                    status=JobStatus.RUNNING.value,
                    started_at=func.coalesce(Job.started_at, now),
                )
            ).rowcount
            if n:
                conn.execute(
                    update(ATTEMPTS)
                    .where(Attempt.id == claim.attempt_id)
                    .where(Attempt.status == AttemptStatus.DISPATCHED.value)
                    .values(
                        status=AttemptStatus.RUNNING.value,
                        worker=worker,
                        host=host,
                        pid=pid,
                        started_at=now,
                        queue_wait_s=now - (row.not_before or row.created_at),
                    )
                )
        return n == 1

    def _held(self, where: Any) -> list[tuple[Claim, str]]:
        open_attempt = (
            select(func.max(Attempt.id))
            .where(Attempt.job_id == Job.id)
            .where(Attempt.status.in_(OPEN_ATTEMPTS))
            .scalar_subquery()
        )
        number = select(func.max(Attempt.number)).where(Attempt.job_id == Job.id).scalar_subquery()
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(
                    *(getattr(Job, c) for c in JOB_PAYLOAD_COLUMNS),
                    Job.lease_owner,
                    Job.status,
                    open_attempt.label("attempt_id"),
                    number.label("number"),
                    _gate_rounds(Job.id).label("gate_round"),
                )
                .where(Job.status.in_(HELD_STATUSES))
                .where(where)
                .order_by(Job.id)
            ).mappings()
            return [
                (
                    Claim(
                        job=_payload(r, int(r["number"] or 0), int(r["gate_round"] or 0)),
                        attempt_id=r["attempt_id"] or 0,
                        lease_owner=r["lease_owner"],
                    ),
                    r["status"],
                )
                for r in rows
            ]

    def list_paused_dispatches(self, owner_prefix: str) -> list[Claim]:
        """Jobs dispatched to Redis (queued: no worker has started them) under owners with
        this prefix whose batch, or the whole queue, is paused: the coordinator takes back
        those that no worker has taken yet (see ``Coordinator._take_back_paused``)."""
        if not self.has_pauses():
            return []  # the common case: one cheap look
        held = self._held(
            (Job.status == JobStatus.QUEUED.value)
            & Job.lease_owner.startswith(owner_prefix, autoescape=True)
            & ~(queue_runs() & batch_runs())
        )
        return [claim for claim, _status in held]

    def list_in_flight(self, owner_prefix: str) -> list[tuple[Claim, str]]:
        """Queued or running jobs whose lease owner starts with ``owner_prefix``, with their
        open attempts and statuses: what the coordinator rebuilds on every reconcile."""
        return self._held(Job.lease_owner.startswith(owner_prefix, autoescape=True))

    def list_held_owners(self, owner_prefix: str) -> list[str]:
        """Lease owners of the queued or running jobs held by owners with this prefix: what is
        in flight, cheaply (no payloads)."""
        with self.engine.connect() as conn:
            owners = conn.execute(
                select(Job.lease_owner)
                .where(Job.status.in_(HELD_STATUSES))
                .where(Job.lease_owner.startswith(owner_prefix, autoescape=True))
            ).scalars()
            return [o for o in owners if o is not None]

    def find_claim(self, job_id: int, lease_owner: str) -> tuple[Claim, str] | None:
        """The claim of ``lease_owner`` on this job, if it still holds it, with the job's
        status; None for a late, repeated or forged message."""
        found = self._held((Job.id == job_id) & (Job.lease_owner == lease_owner))
        return found[0] if found else None

    def read_holders(self, job_ids: list[int]) -> dict[int, str | None]:
        """The current lease owner of each job (None when nobody holds it)."""
        out: dict[int, str | None] = {}
        with self.engine.connect() as conn:
            for part in chunks(job_ids):
                out.update(
                    conn.execute(
                        select(Job.id, Job.lease_owner)
                        .where(Job.id.in_(part))
                        .where(Job.status.in_(HELD_STATUSES))
                    ).all()
                )
        return out
