"""The user's hand on the queue: pause and resume a batch or the whole queue, and change the
priority of jobs still waiting.

Paused means: no job of a paused batch (of any batch, while the queue is paused) is claimed
by a local worker or dispatched to Redis by the coordinator. Jobs already running finish;
jobs the coordinator dispatched that no worker has taken yet are taken back by it (see
``list_paused_dispatches``). Pausing changes no job row, so it is one short write however big
the batch, and resuming makes every job claimable again in its old order.

The claim and the dispatch read the pause in the same ``BEGIN IMMEDIATE`` transaction that
takes the job, so once ``pause`` has committed no new job of that batch starts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from contract.errors import JobNotFound, UsageError
from contract.status import JobStatus
from orchestrator.models import JOBS, Batch, Job, QueueState
from orchestrator.store.base import _CHUNK, CHUNK_ROWS, chunks
from orchestrator.store.reads import ReadModel

# The manifest's own bounds for a priority.
PRIORITY_RANGE = (-1_000_000, 1_000_000)


def check_priority(value: int) -> int:
    low, high = PRIORITY_RANGE
    if not low <= value <= high:
        raise UsageError(f"priority must be between {low} and {high} (got {value})")
    return value


class ControlMixin(ReadModel):
    def _check_batch(self, batch_id: int) -> None:
        with self.engine.connect() as conn:
            if conn.execute(select(Batch.id).where(Batch.id == batch_id)).first() is None:
                raise UsageError(f"no batch {batch_id}")

    def pause(self, batch_id: int | None = None) -> bool:
        """Pause one batch, or (None) the whole queue. Returns False when it already was."""
        now = time.time()
        if batch_id is None:
            with self._tx(write=True) as conn:
                was = conn.execute(select(QueueState.paused_at).where(QueueState.id == 1)).first()
                if was is not None and was.paused_at is not None:
                    return False
                stmt = sqlite_insert(QueueState).values(id=1, paused_at=now)
                conn.execute(
                    stmt.on_conflict_do_update(index_elements=["id"], set_={"paused_at": now})
                )
                return True
        self._check_batch(batch_id)
        with self._tx(write=True) as conn:
            n = conn.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .where(Batch.paused_at.is_(None))
                .values(paused_at=now)
            ).rowcount
        return n == 1

    def resume(self, batch_id: int | None = None) -> bool:
        """Resume one batch, or (None) the whole queue (batches paused one by one stay
        paused). Returns False when it was not paused."""
        if batch_id is None:
            with self._tx(write=True) as conn:
                n = conn.execute(
                    update(QueueState)
                    .where(QueueState.id == 1)
                    .where(QueueState.paused_at.is_not(None))
                    .values(paused_at=None)
                ).rowcount
            return n == 1
        self._check_batch(batch_id)
        with self._tx(write=True) as conn:
            n = conn.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .where(Batch.paused_at.is_not(None))
                .values(paused_at=None)
            ).rowcount
        return n == 1

    def set_priority(
        self, value: int, job_ids: Sequence[int] = (), *, batch_id: int | None = None
    ) -> int:
        """Give pending jobs (by id, or every pending job of a batch) priority ``value``.
        Jobs queued in Redis, running or finished keep theirs. Returns how many changed
        (jobs that already had ``value`` do not count). In short transactions, like cancel."""
        check_priority(value)
        if not job_ids and batch_id is None:
            raise UsageError("name job ids, or --batch")
        cond: ColumnElement[bool] = (Job.status == JobStatus.PENDING.value) & (
            Job.priority != value
        )
        n = 0
        if job_ids:
            ids = sorted(set(job_ids))
            self._jobs_exist(ids)
            if batch_id is not None:
                cond = cond & (Job.batch_id == batch_id)
            for part in chunks(ids):
                with self._tx(write=True) as conn:
                    n += conn.execute(
                        update(JOBS).where(cond & Job.id.in_(part)).values(priority=value)
                    ).rowcount
            return n
        assert batch_id is not None  # checked above
        self._check_batch(batch_id)
        cond = cond & (Job.batch_id == batch_id)
        # A chunk per transaction, in id order from where the last one stopped (rows already
        # updated are not read again).
        last = 0
        while True:
            with self._tx(write=True) as conn:
                found = list(
                    conn.execute(
                        select(Job.id)
                        .where(cond & (Job.id > last))
                        .order_by(Job.id)
                        .limit(CHUNK_ROWS)
                    ).scalars()
                )
                if not found:
                    return n
                last = found[-1]
                for part in chunks(found, _CHUNK):
                    n += conn.execute(
                        update(JOBS).where(cond & Job.id.in_(part)).values(priority=value)
                    ).rowcount

    def _jobs_exist(self, job_ids: Sequence[int]) -> None:
        missing = set(job_ids)
        with self.engine.connect() as conn:
            for part in chunks(sorted(missing)):
                missing -= set(conn.execute(select(Job.id).where(Job.id.in_(part))).scalars())
        if missing:
            raise JobNotFound("no job with id " + ", ".join(map(str, sorted(missing))))
