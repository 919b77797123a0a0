"""Submitting manifests, the queries users ask, and their actions on jobs."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, insert, select, update

from contract.errors import JobNotFound, UsageError
from contract.status import ACTIVE_STATUSES, AttemptStatus, BatchState, JobStatus
from orchestrator.manifest import Manifest
from orchestrator.models import ATTEMPTS, JOBS, Attempt, Batch, Job
from orchestrator.store.base import (
    CHUNK_ROWS,
    OPEN_ATTEMPTS,
    SubmitResult,
    chunks,
    process_gone,
)
from orchestrator.store.reads import ReadModel
from orchestrator.store.sql import (
    DROP_LOADING_CHUNK,
    INSERT_JOBS,
    PUBLISH_LOADED_CHUNK,
    SPEC_COLUMNS,
)

# A batch whose loader has not written for this long is abandoned (its loader died on
# another host, or this host's pid was reused).
LOADER_STALE_S = 600.0


def _loader_dead(loader: str | None, seen_at: float | None, now: float) -> bool:
    """Whether the process loading a batch is gone: a dead pid on this host, or silence."""
    if seen_at is None or now - seen_at > LOADER_STALE_S:
        return True
    host, _, rest = (loader or "").rpartition(":")
    pid = rest.split("/")[0]
    return pid.isdigit() and process_gone(host, int(pid))


class _Pace:
    """Rows per write transaction of a bulk change, adjusted after each so that it holds the
    write lock about ``target_s``: fewer rows on a loaded machine, more on an idle one."""

    def __init__(self, rows: int, target_s: float = 0.25, low: int = 200, high: int = 50_000):
        self.rows = rows
        self.target_s, self.low, self.high = target_s, low, high

    def took(self, rows: int, seconds: float) -> None:
        if rows and seconds > 0:
            per_row = seconds / rows
            self.rows = int(min(self.high, max(self.low, self.target_s / per_row)))


class JobsMixin(ReadModel):
    def submit(
        self,
        manifest: Manifest,
        *,
        name: str,
        defaults: dict[str, Any],
        max_attempts: int,
        licences: Mapping[str, Any] | None = None,
        chunk_rows: int = CHUNK_ROWS,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> SubmitResult:
        """Insert a validated manifest's jobs; known fingerprints are skipped.

        A big manifest goes in as many short transactions (about ``chunk_rows`` jobs each,
        paced to hold the write lock about a quarter second), so workers renewing their
        leases never wait long. Its jobs are ``loading`` (invisible to workers and to counts)
        until every row is in; then they are made pending, again in chunks. A loader that dies
        half way leaves a batch that the next submit (or ``verify --repair``) removes whole;
        one that dies while publishing leaves one they finish. A manifest of one chunk or
        less goes in as one transaction, pending at once (complete when it becomes visible).
        ``licences``: each model's licence (``workers.models.licences.licences_of``), recorded
        with the batch; None records none (read as unknown)."""
        self.recover_submits()
        now = time.time()
        whole = len(manifest.jobs) <= chunk_rows
        loader = f"{socket.gethostname()}:{os.getpid()}/{secrets.token_hex(4)}"
        status = JobStatus.PENDING if whole else JobStatus.LOADING
        extra_json = [
            json.dumps(s.extra, ensure_ascii=False) if s.extra else None for s in manifest.jobs
        ]
        licences_json = None if licences is None else json.dumps(licences, sort_keys=True)

        def rows(batch_id: int, start: int, stop: int) -> list[tuple[Any, ...]]:
            # Fingerprints and tuples outside the lock: only the INSERT holds it.
            return [
                (
                    batch_id,
                    s.fingerprint(),
                    status.value,
                    *(getattr(s, c) for c in SPEC_COLUMNS),
                    extra_json[start + i],
                    0,
                    max_attempts,
                    now,
                )
                for i, s in enumerate(manifest.jobs[start:stop])
            ]

        def new_batch(conn: Connection, state: BatchState) -> int:
            return int(
                conn.execute(
                    insert(Batch)
                    .values(
                        name=name,
                        manifest_path=manifest.path,
                        manifest_sha256=manifest.sha256,
                        rows=manifest.rows,
                        job_count=0,
                        duplicates=0,
                        defaults_json=json.dumps(defaults, sort_keys=True),
                        licences_json=licences_json,
                        created_at=now,
                        state=state.value,
                        loader=None if whole else loader,
                        loader_seen_at=None if whole else now,
                    )
                    .returning(Batch.id)
                ).scalar_one()
            )

        def counted(conn: Connection, batch_id: int, added: int, **state: Any) -> SubmitResult:
            duplicates = len(manifest.jobs) - added
            if added == 0:  # nothing new: leave no empty batch behind
                conn.execute(delete(Batch).where(Batch.id == batch_id))
                return SubmitResult(None, manifest.rows, 0, duplicates)
            conn.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(job_count=added, duplicates=duplicates, **state)
            )
            return SubmitResult(batch_id, manifest.rows, added, duplicates)

        if whole:
            with self._tx(write=True) as conn:
                batch_id = new_batch(conn, BatchState.READY)
                batch = rows(batch_id, 0, len(manifest.jobs))
                # The driver's executemany directly: SQLAlchemy's per-row parameter
                # processing would double the time of a 100k-row manifest.
                added = conn.exec_driver_sql(INSERT_JOBS, batch).rowcount if batch else 0
                return counted(conn, batch_id, added)

        with self._tx(write=True) as conn:
            batch_id = new_batch(conn, BatchState.LOADING)
        added = 0
        total = len(manifest.jobs)
        pace = _Pace(chunk_rows)
        try:
            start = 0
            while start < total:
                chunk = rows(batch_id, start, start + pace.rows)
                t0 = time.perf_counter()
                with self._tx(write=True) as conn:
                    added += conn.exec_driver_sql(INSERT_JOBS, chunk).rowcount
                    conn.execute(
                        update(Batch).where(Batch.id == batch_id).values(loader_seen_at=time.time())
                    )
                pace.took(len(chunk), time.perf_counter() - t0)
                start += len(chunk)
                if on_progress is not None:
                    on_progress(start, total)
            with self._tx(write=True) as conn:
                result = counted(
                    conn,
                    batch_id,
                    added,
                    state=BatchState.PUBLISHING.value,
                    loader_seen_at=time.time(),
                )
        except BaseException:
            # Best effort: with the database away, the next submit removes it.
            with contextlib.suppress(Exception):
                self._drop_batch(batch_id)
            raise
        if result.batch_id is not None:
            self._publish_batch(batch_id, chunk_rows)
        return result

    def _publish_batch(self, batch_id: int, chunk_rows: int = CHUNK_ROWS) -> None:
        """Make a fully loaded batch's jobs pending, a chunk per transaction, then the batch
        ready. Idempotent: anyone may finish what a dead loader started."""
        pace = _Pace(chunk_rows)
        while True:
            t0 = time.perf_counter()
            with self._tx(write=True) as conn:
                n = conn.exec_driver_sql(PUBLISH_LOADED_CHUNK, (batch_id, pace.rows)).rowcount
                if n == 0:
                    conn.execute(
                        update(Batch)
                        .where(Batch.id == batch_id)
                        .values(state=BatchState.READY.value, loader=None, loader_seen_at=None)
                    )
                    return
                conn.execute(
                    update(Batch).where(Batch.id == batch_id).values(loader_seen_at=time.time())
                )
            pace.took(n, time.perf_counter() - t0)

    def _drop_batch(self, batch_id: int, chunk_rows: int = CHUNK_ROWS) -> None:
        """Remove a half-loaded batch, a chunk per transaction."""
        while True:
            with self._tx(write=True) as conn:
                if conn.exec_driver_sql(DROP_LOADING_CHUNK, (batch_id, chunk_rows)).rowcount == 0:
                    conn.execute(delete(Batch).where(Batch.id == batch_id))
                    return

    def recover_submits(self, now: float | None = None) -> dict[str, list[int]]:
        """Finish publishing batches whose loader died after inserting every row, and remove
        those whose loader died half way. Returns the batch ids of each."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Batch.id, Batch.state, Batch.loader, Batch.loader_seen_at).where(
                    Batch.state != BatchState.READY.value
                )
            ).all()
        done: dict[str, list[int]] = {"published": [], "removed": []}
        for r in rows:
            if not _loader_dead(r.loader, r.loader_seen_at, now):
                continue
            if r.state == BatchState.PUBLISHING.value:
                self._publish_batch(r.id)
                done["published"].append(r.id)
            else:
                self._drop_batch(r.id)
                done["removed"].append(r.id)
        return done

    # -- queries -----------------------------------------------------------------------------

    # -- user actions ------------------------------------------------------------------------

    def _check_exist(self, job_ids: Sequence[int]) -> None:
        missing: set[int] = set(job_ids)
        with self.engine.connect() as conn:
            for part in chunks(sorted(missing)):
                missing -= set(conn.execute(select(Job.id).where(Job.id.in_(part))).scalars())
        if missing:
            raise JobNotFound("no job with id " + ", ".join(map(str, sorted(missing))))

    def _bulk(
        self,
        job_ids: Sequence[int],
        batch_id: int | None,
        statuses: Sequence[str],
        change: Callable[[Connection, ColumnElement[bool]], int],
    ) -> int:
        """Apply ``change`` to the jobs named (by id, by batch, or every job when both are
        empty and ``batch_id`` is None) that are in ``statuses``, in short transactions: ids
        ``_CHUNK`` at a time, or ``CHUNK_ROWS`` rows of a batch at a time."""
        base: ColumnElement[bool] = Job.status.in_(statuses)
        if batch_id is not None:
            base = base & (Job.batch_id == batch_id)
        n = 0
        if job_ids:
            self._check_exist(job_ids)
            for part in chunks(list(job_ids)):
                with self._tx(write=True) as conn:
                    n += change(conn, base & Job.id.in_(part))
            return n
        # By condition: the rows that still match, a chunk at a time, until none is left.
        while True:
            with self._tx(write=True) as conn:
                ids = list(
                    conn.execute(
                        select(Job.id).where(base).order_by(Job.id).limit(CHUNK_ROWS)
                    ).scalars()
                )
                if not ids:
                    return n
                # Chunks of ids in one transaction: one lock hold of about CHUNK_ROWS rows.
                for part in chunks(ids):
                    n += change(conn, base & Job.id.in_(part))

    def retry(
        self,
        job_ids: Sequence[int] = (),
        *,
        batch_id: int | None = None,
        statuses: Sequence[str] = (JobStatus.FAILED.value, JobStatus.CANCELLED.value),
        everything: bool = False,
    ) -> int:
        """Failed or cancelled jobs (by id, of a batch, or with ``everything`` all of them)
        go back to pending with a fresh attempt budget; their attempt numbers go on."""
        if not job_ids and batch_id is None and not everything:
            raise UsageError("name job ids, or --batch")

        def change(conn: Connection, cond: ColumnElement[bool]) -> int:
            return conn.execute(
                update(JOBS)
                .where(cond)
                .values(
                    status=JobStatus.PENDING.value,
                    attempts=0,
                    not_before=None,
                    finished_at=None,
                )
            ).rowcount

        return self._bulk(job_ids, batch_id, list(statuses), change)

    def cancel(
        self, job_ids: Sequence[int] = (), *, batch_id: int | None = None, everything: bool = False
    ) -> int:
        """Pending, queued and running jobs become cancelled and their open attempts are
        closed as cancelled; a running one's worker stops at its next lease renewal (or
        cancel check) and its result, if any, is dropped."""
        if not job_ids and batch_id is None and not everything:
            raise UsageError("name job ids, or --batch")
        now = time.time()

        def change(conn: Connection, cond: ColumnElement[bool]) -> int:
            conn.execute(
                update(ATTEMPTS)
                .where(Attempt.job_id.in_(select(Job.id).where(cond)))
                .where(Attempt.status.in_(OPEN_ATTEMPTS))
                .values(
                    status=AttemptStatus.CANCELLED.value,
                    finished_at=now,
                    error="cancelled by the user",
                )
            )
            return conn.execute(
                update(JOBS)
                .where(cond)
                .values(
                    status=JobStatus.CANCELLED.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=now,
                )
            ).rowcount

        return self._bulk(job_ids, batch_id, [s.value for s in ACTIVE_STATUSES], change)
