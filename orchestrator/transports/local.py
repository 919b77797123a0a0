"""The local transport: a worker that claims jobs straight from SQLite under a lease.

Several such workers may run against one database. Each holds a lease on its job and renews
it from a background thread, with a short wait for the write lock; a worker whose renewals
have failed for most of its lease stops its job by itself (monotonic clock) rather than
compute blind, and a worker that dies stops renewing, so the next claim by anyone puts its
job back to pending (or to failed once its attempts are used up). Results go through
``orchestrator.results``: a worker that lost its job never touches the job's file.

A busy or full database and a full or unwritable output folder are states, not crashes: the
worker says so in one line, keeps what it has (a finished image stays in memory, its lease
renewed), takes no new work, and goes on when the resource is back, retrying with backoff. A
stop asked meanwhile (SIGTERM, Ctrl-C) does not wait for it: a job whose image is not saved is
given back, one whose success is recorded is published by the next start. A job whose own
folder cannot be written is that job's state (``orchestrator.results``): the worker goes on
with the others.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from contract.errors import (
    JobInputError,
    JobInterrupted,
    PublishBlocked,
    QualityGateFailed,
    TransientError,
)
from contract.status import JobStatus
from orchestrator.config import WorkerSettings
from orchestrator.events import JobEvent
from orchestrator.results import Results
from orchestrator.store import Claim, JobStore, WorkerIdentity, backoff_seconds
from workers.batching import batch_limit
from workers.quality import make_judge
from workers.task import (
    BatchRunner,
    PipelineCache,
    Runner,
    TaskOutput,
    batch_runner_for,
    default_runner,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A worker whose last successful renewal is older than this share of its lease stops its job.
FENCE_FRACTION = 0.75
HOUSEKEEPING_EVERY_S = 60.0  # recover unpublished results and sweep staged files
PAUSE_BACKOFF = 8  # a stuck image is tried again after pause_seconds, doubling up to 8 times that
ROW_EVERY_S = 5.0  # a worker rewrites its row this often: status shows a silent one as stale


def worker_identity() -> WorkerIdentity:
    host = socket.gethostname()
    pid = os.getpid()
    return WorkerIdentity(name=f"{host}:{pid}:{uuid.uuid4().hex[:6]}", host=host, pid=pid)


@dataclass
class WorkerStats:
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    busy_s: float = 0.0
    started_at: float = field(default_factory=time.time)


class _LeaseKeeper(threading.Thread):
    """Renews a claim's lease every third of its length until stopped. ``lost``: the
    database said the job is no longer ours. ``fenced``: renewals have failed for most of the
    lease, so someone may take the job over any moment."""

    def __init__(self, store: JobStore, claim: Claim, lease_seconds: float) -> None:
        super().__init__(name=f"lease-{claim.job['id']}", daemon=True)
        self.store = store
        self.claim = claim
        self.lease_seconds = lease_seconds
        self.lost = False
        self.last_ok = time.monotonic()
        self._done = threading.Event()

    @property
    def fenced(self) -> bool:
        return time.monotonic() - self.last_ok > self.lease_seconds * FENCE_FRACTION

    def run(self) -> None:
        interval = max(0.05, self.lease_seconds / 3)
        # A renewal waits for the write lock at most a third of the time left.
        busy_timeout = max(0.2, min(5.0, interval))
        while not self._done.wait(interval):
            try:
                if not self.store.renew(
                    self.claim, self.lease_seconds, busy_timeout_s=busy_timeout
                ):
                    self.lost = True
                    return
                self.last_ok = time.monotonic()
            except Exception as exc:  # busy, full or briefly unreachable: try again next tick
                logger.warning("job %s: lease renewal failed: %s", self.claim.job["id"], exc)

    def stop(self) -> None:
        self._done.set()
        self.join()


class _RowKeeper(threading.Thread):
    """Rewrites the worker's row every ROW_EVERY_S with its current state, so that ``status``
    can tell a live worker (idle for hours, or deep in a long job) from a dead one."""

    def __init__(self, worker: LocalWorker) -> None:
        super().__init__(name="worker-row", daemon=True)
        self.worker = worker
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(ROW_EVERY_S):
            # A beat waits little for the write lock: a missed one is made up by the next.
            self.worker._report(None, busy_timeout_s=1.0)

    def stop(self) -> None:
        self._done.set()
        self.join()


class LocalWorker:
    def __init__(
        self,
        store: JobStore,
        settings: WorkerSettings,
        *,
        cache: PipelineCache | None = None,
        runner: Runner = default_runner,
        batch_runner: BatchRunner | None = None,
        on_event: Callable[[JobEvent], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.results = Results(store, settings.output_dir)
        self.cache = cache or PipelineCache(
            backend=settings.backend,
            device=settings.device,
            threads=settings.threads,
            compute_units=settings.compute_units,
            judge=make_judge(settings.judge),
            tuning=settings.tuning,
        )
        self.runner = runner
        if batch_runner is None:
            batch_runner = batch_runner_for(runner)
        self.batch_runner = batch_runner
        self.on_event = on_event
        self.identity = worker_identity()
        self.stats = WorkerStats()
        self._stop = threading.Event()  # finish the current job, then exit
        self._abort = threading.Event()  # give the current job back now
        self._paused: str | None = None  # why no work is taken now (one log line per state)
        self._reported: tuple[str, int | None] = ("idle", None)  # state and job, for _RowKeeper
        self._report_lock = threading.Lock()  # the row is written by the loop and _RowKeeper

    # Called from signal handlers: only set flags.
    def request_stop(self) -> None:
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> str | None:
        """Why no work goes on now (a full or unwritable disk, a busy database), or None."""
        return self._paused

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        """Work until stopped, until ``max_jobs``, or (burst) until no job is left."""
        try:
            self.results.claim_folder()  # another database's folder: refused before any job
        except TransientError as exc:  # said again, as a pause, when a result needs it
            logger.warning("%s", exc)
        logger.info("worker %s started", self.identity.name, extra={"action": "worker_started"})
        self._report("idle")
        keeper = _RowKeeper(self)
        keeper.start()
        try:
            stats = self._loop()
        finally:
            keeper.stop()
        self._report("stopped")
        logger.info(
            "worker %s stopped: %d succeeded, %d failed",
            self.identity.name,
            self.stats.succeeded,
            self.stats.failed,
            extra={"action": "worker_stopped"},
        )
        return stats

    def _loop(self) -> WorkerStats:
        s = self.settings
        self._housekeeping(backoff=False)
        next_housekeeping = time.monotonic() + HOUSEKEEPING_EVERY_S
        done = 0
        while not self._stop.is_set():
            if s.max_jobs is not None and done >= s.max_jobs:
                break
            if time.monotonic() >= next_housekeeping:  # busy or idle: blocked images wait
                self._housekeeping()
                next_housekeeping = time.monotonic() + HOUSEKEEPING_EVERY_S
            claim = self._transient(
                lambda: self.store.claim(
                    self.identity,
                    lease_seconds=s.lease_seconds,
                    prefer_model=self.cache.loaded_model,
                ),
                "cannot take a job",
            )
            if claim is None:
                # In burst mode keep waiting while others still run jobs: their leases may
                # expire, and then those jobs are ours to finish. Jobs of paused batches do
                # not count: nobody takes them until they are resumed.
                if s.burst and not self._paused:
                    active = self._transient(self.store.has_workable, "cannot read the queue")
                    if active is False:
                        break
                self._stop.wait(s.poll_seconds if not self._paused else s.pause_seconds)
                continue
            claims = [claim, *self._companions(claim, done)]
            self._report("busy", claim.job["id"])
            self._work(claims)
            self._report("idle")
            done += len(claims)
        self._housekeeping(backoff=False, final=True)
        return self.stats

    def _transient(self, fn: Callable[[], T], what: str) -> T | None:
        """``fn()``, or None (after one log line per new state) when the database or the
        disk is busy or full: the caller waits and tries again."""
        try:
            value = fn()
        except TransientError as exc:
            self._pause(f"{what}: {exc}")
            return None
        self._resume()
        return value

    def _pause(self, why: str) -> None:
        if self._paused != why:
            logger.error("paused: %s (trying again in %.0fs)", why, self.settings.pause_seconds)
            self._paused = why
            self._report("paused")

    def _resume(self) -> None:
        if self._paused is not None:
            logger.warning("resumed (was: %s)", self._paused)
            self._paused = None
            self._report("idle")

    def _housekeeping(self, *, backoff: bool = True, final: bool = False) -> None:
        """Finish what killed processes left: half-submitted batches, results committed but
        not published, staged and temporary files nobody will publish. With ``backoff``
        (between jobs), an image that could not be published is tried only once its next try
        is due; at start and stop, every one is tried. ``final``: the worker is stopping, so
        a full disk or busy database is said once, not waited for."""

        def run() -> None:
            self.store.recover_submits()
            self.results.recover(backoff=backoff)
            self.results.sweep()

        if not final:
            self._transient(run, "housekeeping")
            return
        try:
            run()
        except TransientError as exc:
            logger.warning("could not finish up at exit (the next start does): %s", exc)

    # -- one job -------------------------------------------------------------------------------

    def _companions(self, first: Claim, done: int) -> list[Claim]:
        """More jobs to run in ``first``'s pipeline call, up to the batch size (and within
        ``--max-jobs``). A database too busy to give them is no reason to wait: the first
        job runs alone."""
        s = self.settings
        limit = batch_limit(s.batch_size, self.cache.current, first.job) - 1
        if s.max_jobs is not None:
            limit = min(limit, s.max_jobs - done - 1)
        if limit <= 0:
            return []
        try:
            return self.store.claim_companions(
                first, self.identity, lease_seconds=s.lease_seconds, limit=limit
            )
        except TransientError as exc:
            logger.warning("job %s runs alone: %s", first.job["id"], exc)
            return []

    def _work(self, claims: list[Claim]) -> None:
        """Run claimed jobs in one pipeline call (one job: alone), then record each on its
        own: an image, a failure or a release, each under its own lease."""
        keepers = [_LeaseKeeper(self.store, c, self.settings.lease_seconds) for c in claims]
        for keeper in keepers:
            keeper.start()
        t0 = time.perf_counter()

        def should_stop() -> bool:
            # A batch goes on while any of its jobs is still ours; the others' images are
            # dropped at delivery, fenced by their leases.
            return self._abort.is_set() or all(k.lost or k.fenced for k in keepers)

        try:
            outcomes = self.batch_runner([c.job for c in claims], self.cache, should_stop)
            for claim, keeper, outcome in zip(claims, keepers, outcomes, strict=True):
                seconds = time.perf_counter() - t0
                log_extra = {"job_id": claim.job["id"], "attempt": claim.attempt_id}
                if isinstance(outcome, JobInterrupted):
                    self._interrupted(claim, keeper, outcome, seconds)
                elif isinstance(outcome, Exception):
                    self._failed(claim, outcome, seconds, log_extra)
                else:
                    # The lease stays renewed while the image is written and recorded: a
                    # full disk may hold us here for a while, and the job is still ours.
                    self._deliver(claim, keeper, outcome, t0, log_extra)
        finally:
            for keeper in keepers:
                keeper.stop()

    def _interrupted(
        self, claim: Claim, keeper: _LeaseKeeper, exc: Exception, seconds: float
    ) -> None:
        job_id = claim.job["id"]
        if keeper.lost or keeper.fenced:
            why = "lease lost" if keeper.lost else "lease renewals failed"
            try:
                self.store.release(claim, why)  # marks the attempt superseded if not ours
            except TransientError as err:  # the lease runs out and someone recovers it
                logger.warning("job %s: could not give it back: %s", job_id, err)
            self._emit(JobEvent(job_id, "lost", seconds, error=f"{why}: {exc}"))
            return
        try:
            self.store.release(claim, f"worker shut down ({exc})")
        except TransientError as err:
            logger.warning("job %s: could not give it back: %s", job_id, err)
        self.stats.released += 1
        logger.info("job %s released", job_id, extra={"job_id": job_id, "action": "job_released"})
        self._emit(JobEvent(job_id, "released", seconds))

    def _failed(
        self, claim: Claim, exc: Exception, seconds: float, log_extra: dict[str, Any]
    ) -> None:
        job_id = claim.job["id"]
        error = f"{type(exc).__name__}: {exc}"
        tried = exc.scores if isinstance(exc, QualityGateFailed) else None
        status = self._transient(
            lambda: self.store.fail(
                claim, error, retryable=not isinstance(exc, JobInputError), scores=tried
            ),
            "cannot record a failure",
        )
        # INFO: the progress line (or the service log, at INFO) says it once.
        logger.info("job %s failed: %s", job_id, error, extra={**log_extra, "action": "job_failed"})
        if status == JobStatus.FAILED:
            self.stats.failed += 1
        retry_in = backoff_seconds(claim.job["attempt"]) if status == JobStatus.PENDING else None
        self._emit(
            JobEvent(
                job_id,
                JobStatus.FAILED if status == JobStatus.FAILED else "retrying",
                seconds,
                error=error,
                retry_in=retry_in,
            )
        )

    def _deliver(
        self,
        claim: Claim,
        keeper: _LeaseKeeper,
        output: TaskOutput,
        t0: float,
        log_extra: dict[str, Any],
    ) -> None:
        """Stage, commit, publish (``orchestrator.results``); retried with backoff while the
        disk or the database is full or busy, or the output folder unwritable, for as long as
        the job is ours and no stop was asked: a stop does not wait for a resource that may
        not come back (the job is given back, or, once its success is recorded, left for the
        next start to publish)."""
        job_id = claim.job["id"]
        delivery = self.results.delivery(claim, output.png, output.result)
        delay = self.settings.pause_seconds
        stuck = False  # a try failed: a stop now leaves rather than waits
        while True:
            leave = self._abort.is_set() or (stuck and self._stop.is_set())
            if not delivery.committed and keeper.lost:
                delivery.abandon()
                self._emit(JobEvent(job_id, "lost", time.perf_counter() - t0, error="lease lost"))
                return
            if leave:
                self._leave(claim, delivery, time.perf_counter() - t0, log_extra)
                return
            try:
                published = delivery.advance()
                break
            except PublishBlocked as exc:
                # Only this job's folder: recorded on the job, tried again with backoff.
                self._resume()
                self.stats.succeeded += 1
                self.stats.busy_s += float(output.result.get("total_s") or 0.0)
                self._emit(
                    JobEvent(job_id, "unpublished", time.perf_counter() - t0, error=str(exc))
                )
                return
            except TransientError as exc:
                stuck = True
                self._pause(f"job {job_id}: {exc}")
                self._stop.wait(delay)
                delay = min(delay * 2, self.settings.pause_seconds * PAUSE_BACKOFF)
        self._resume()
        if not published:
            # Cancelled, or finished by another worker after our lease was lost.
            logger.info(
                "job %s result dropped", job_id, extra={**log_extra, "action": "job_superseded"}
            )
            self._emit(JobEvent(job_id, "superseded", time.perf_counter() - t0))
            return
        self.stats.succeeded += 1
        self.stats.busy_s += float(output.result.get("total_s") or 0.0)
        logger.info(
            "job %s succeeded in %.2fs",
            job_id,
            float(output.result.get("total_s") or 0.0),
            extra={**log_extra, "action": "job_succeeded", "path": str(delivery.final)},
        )
        self._emit(
            JobEvent(job_id, JobStatus.SUCCEEDED, time.perf_counter() - t0, str(delivery.final))
        )

    def _leave(
        self, claim: Claim, delivery: Any, seconds: float, log_extra: dict[str, Any]
    ) -> None:
        """Stop delivering an image that cannot be saved now, because a stop was asked: before
        its commit the job is given back (no attempt used up); after it the job is succeeded
        and its bytes wait in the staging folder for the next start to publish."""
        job_id = claim.job["id"]
        why = self._paused or "asked to stop"
        if delivery.committed:
            self.stats.succeeded += 1
            logger.warning(
                "job %s succeeded but its image is not in place (%s): it waits in %s, and the "
                "next start of a worker or the coordinator publishes it (or `orchestrate "
                "verify --repair`)",
                job_id,
                why,
                delivery.staged.path,
                extra={**log_extra, "action": "job_unpublished"},
            )
            self._emit(JobEvent(job_id, "unpublished", seconds, error=why))
            return
        delivery.abandon()
        reason = f"stopped before its image was saved ({why})"
        try:
            self.store.release(claim, reason)
        except TransientError as exc:  # its lease runs out and the next claim recovers it
            logger.warning("job %s: could not give it back: %s", job_id, exc)
        self.stats.released += 1
        logger.warning(
            "job %s given back: %s", job_id, reason, extra={**log_extra, "action": "job_released"}
        )
        self._emit(JobEvent(job_id, "released", seconds, error=reason))

    # -- reporting -----------------------------------------------------------------------------

    def _report(
        self,
        state: str | None,
        current_job: int | None = None,
        *,
        busy_timeout_s: float | None = None,
    ) -> None:
        """This worker's row in the workers table, for status and the dashboard (a busy one
        whose model is being loaded says ``loading``); ``state`` None: as last reported."""
        with self._report_lock:
            if state is None:
                state, current_job = self._reported
            self._reported = (state, current_job)
            self._write_row(state, current_job, busy_timeout_s)

    def _write_row(self, state: str, current_job: int | None, busy_timeout_s: float | None) -> None:
        backend = self.cache.current
        if state == "busy" and self.cache.loading is not None:
            state = "loading"
        try:
            self.store.upsert_workers(
                [
                    {
                        "name": self.identity.name,
                        "transport": "local",
                        "host": self.identity.host,
                        "pid": self.identity.pid,
                        "backend": getattr(backend, "name", None),
                        "device": getattr(backend, "device", None),
                        "model": self.cache.loading or self.cache.loaded_model,
                        "state": state,
                        "message": self._paused if state == "paused" else None,
                        "current_job": current_job,
                        "jobs_done": self.stats.succeeded,
                        "jobs_failed": self.stats.failed,
                        "busy_s": self.stats.busy_s,
                        "started_at": self.stats.started_at,
                        "last_seen": time.time(),
                        "heartbeat_s": ROW_EVERY_S,
                    }
                ],
                busy_timeout_s=busy_timeout_s,
            )
        except Exception as exc:  # status is best effort; the work is not
            logger.debug("could not update the workers table: %s", exc)

    def _emit(self, event: JobEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
