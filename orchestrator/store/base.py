"""The store's base: the engine, transactions, and the values shared by its parts.

The store runs its own transactions: ``BEGIN IMMEDIATE`` for writes (writers queue on SQLite's
busy timeout rather than failing mid-transaction) and ``BEGIN`` for reads that need one snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from orchestrator.models import Attempt, AttemptStatus, Job, JobStatus

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


# A job is held by a lease owner while queued (dispatched to Redis) or running.
HELD_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
OPEN_ATTEMPTS = (AttemptStatus.DISPATCHED.value, AttemptStatus.RUNNING.value)


def backoff_seconds(attempt: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Delay before retry ``attempt + 1``: exponential, capped."""
    return float(min(cap, base ** max(0, attempt)))


class StoreBase:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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

    @staticmethod
    def _recent(status: str, *columns: Any, window: int, batch_id: int | None = None) -> Any:
        """The last ``window`` attempts with ``status``, newest first: the bounded slice every
        timing report reads, so none of them scans a million rows."""
        stmt = (
            select(*columns)
            .where(Attempt.status == status)
            .order_by(Attempt.id.desc())
            .limit(window)
        )
        if batch_id is not None:
            stmt = stmt.where(Attempt.batch_id == batch_id)
        return stmt

    @staticmethod
    def _owned(claim: Claim) -> Any:
        """An UPDATE of the job that matches only while this claim still holds it."""
        return (
            update(Job)
            .where(Job.id == claim.job["id"])
            .where(Job.status.in_(HELD_STATUSES))
            .where(Job.lease_owner == claim.lease_owner)
        )

    @staticmethod
    def _finish_attempt(
        conn: Connection, claim: Claim, status: AttemptStatus, **values: Any
    ) -> None:
        # Only an open attempt: one already marked lost keeps that verdict.
        conn.execute(
            update(Attempt)
            .where(Attempt.id == claim.attempt_id)
            .where(Attempt.status.in_(OPEN_ATTEMPTS))
            .values(status=status.value, finished_at=time.time(), **values)
        )
