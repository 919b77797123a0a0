"""The store's base: the engine, transactions, and the values shared by its parts.

The store runs its own transactions: ``BEGIN IMMEDIATE`` for writes (writers queue on SQLite's
busy timeout rather than failing mid-transaction) and ``BEGIN`` for reads that need one snapshot.
A fenced view of the store (``fenced``) runs a check first in every write transaction, under
the write lock: the coordinator's own lease fences every write it makes, whatever it changes.
Every write transaction is short: anything that touches many rows (a submit, a retry of every
failed job) goes in chunks of ``CHUNK_ROWS``, and every ``IN (...)`` list in chunks of
``_CHUNK`` ids, under SQLite's variable limit of 32,766 in many builds.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine, func, select, update

from contract.job import PAYLOAD_FIELDS, RESULT_TEXT, RESULT_TIMINGS
from contract.limits import JOB_RETRY_BACKOFF
from contract.status import AttemptStatus, JobStatus
from orchestrator.models import ATTEMPTS, JOBS, Attempt, Job

# What a worker gets: the job's fields plus the number of this attempt.
JOB_PAYLOAD_COLUMNS = PAYLOAD_FIELDS
# The attempt's timing columns: the queue wait (the store's own measure, set at claim time)
# and what the worker's result reports.
TIMING_COLUMNS = ("queue_wait_s", *RESULT_TIMINGS)
# The stage timings an exported image carries.
EXPORT_TIMINGS = ("text_encode_s", "denoise_s", "decode_s", "total_s")
# What made an exported image (its attempt's), beside what the job asked for (``quantization``):
# ``fp16`` asked of a CPU runs in fp32.
EXPORT_RUN = ("backend", "device", "dtype")
# What a worker reports; the queue wait is the store's own measure, set at claim time.
RESULT_COLUMNS = (*RESULT_TEXT, "torch_threads", "batch_size", *RESULT_TIMINGS)
_CHUNK = 500  # ids per IN (...) list
CHUNK_ROWS = 5000  # rows per write transaction of a bulk change (about 0.1 s here)
TIMING_WINDOW = 1000

T = TypeVar("T")
# A check run inside a write transaction, under the write lock; it raises to change nothing.
Fence = Callable[[Connection], None]


def chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


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

    @property
    def job_id(self) -> int:
        return int(self.job["id"])


# A job is held by a lease owner while queued (dispatched to Redis) or running.
HELD_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
OPEN_ATTEMPTS = (AttemptStatus.DISPATCHED.value, AttemptStatus.RUNNING.value)


def process_gone(host: str | None, pid: int | None) -> bool:
    """Whether a process named by host and pid is known to be dead: only a process of this
    host can be checked (others count as alive)."""
    import os
    import socket

    if not host or not pid or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def backoff_seconds(attempt: int) -> float:
    """Delay before retry ``attempt + 1``: ``JOB_RETRY_BACKOFF``."""
    return JOB_RETRY_BACKOFF.delay(attempt)


class StoreBase:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._fence: Fence | None = None

    def fenced(self, fence: Fence) -> Self:
        """This store, with ``fence`` run first in every write transaction it opens (under the
        write lock, so nothing can change what it checked before the write commits): when it
        raises, the transaction changes nothing. Reads are as before."""
        view = copy.copy(self)
        view._fence = fence
        return view

    def check_fence(self) -> None:
        """Run this view's fence now, in a read transaction: for a step outside the database
        (a file, a Redis call) that should not start once the fence has fallen."""
        if self._fence is not None:
            with self._tx(write=False) as conn:
                self._fence(conn)

    @contextmanager
    def _tx(self, *, write: bool, busy_timeout_s: float | None = None) -> Iterator[Connection]:
        """One transaction. ``busy_timeout_s`` waits that long (not the default 30 s) for the
        write lock: a lease renewal must fail fast rather than sleep through its lease."""
        with self.engine.connect() as conn:
            if busy_timeout_s is not None:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    if write and self._fence is not None:
                        self._fence(conn)
                    yield conn
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
            finally:
                if busy_timeout_s is not None:
                    from orchestrator.database import BUSY_TIMEOUT_MS

                    conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

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
        """An UPDATE of the job that matches only while this claim still holds it: the fence
        every write of a lease holder goes through."""
        return (
            update(JOBS)
            .where(Job.id == claim.job["id"])
            .where(Job.status.in_(HELD_STATUSES))
            .where(Job.lease_owner == claim.lease_owner)
        )

    @staticmethod
    def _next_attempt_number(conn: Connection, job_id: int) -> int:
        """Attempt numbers only grow, whatever a retry or a release did to the budget."""
        last = conn.execute(
            select(func.max(Attempt.number)).where(Attempt.job_id == job_id)
        ).scalar()
        return int(last or 0) + 1

    @staticmethod
    def _finish_attempt(
        conn: Connection, claim: Claim, status: AttemptStatus, **values: Any
    ) -> None:
        # Only an open attempt: one already marked lost or cancelled keeps that verdict.
        conn.execute(
            update(ATTEMPTS)
            .where(Attempt.id == claim.attempt_id)
            .where(Attempt.status.in_(OPEN_ATTEMPTS))
            .values(status=status.value, finished_at=time.time(), **values)
        )
