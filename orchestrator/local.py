"""The local transport: a worker that claims jobs straight from SQLite under a lease.

Several such workers may run against one database. Each holds a lease on its job and renews
it from a background thread; a worker that dies stops renewing, and the next claim by anyone
puts its job back to pending (or to failed once its attempts are used up).
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
from pathlib import Path
from typing import Any

from orchestrator.config import WorkerSettings
from orchestrator.output import image_path, write_atomic
from orchestrator.store import Claim, JobStore, WorkerIdentity
from workers.backends import JobInputError, JobInterrupted
from workers.task import PipelineCache, TaskOutput, run_job

logger = logging.getLogger(__name__)

Runner = Callable[[dict[str, Any], PipelineCache, Callable[[], bool]], TaskOutput]


def default_runner(
    job: dict[str, Any], cache: PipelineCache, should_stop: Callable[[], bool]
) -> TaskOutput:
    return run_job(job, cache, should_stop=should_stop)


def worker_identity() -> WorkerIdentity:
    host = socket.gethostname()
    pid = os.getpid()
    return WorkerIdentity(name=f"{host}:{pid}:{uuid.uuid4().hex[:6]}", host=host, pid=pid)


@dataclass
class JobEvent:
    job_id: int
    status: str  # succeeded | failed | retrying | released | lost | superseded
    seconds: float
    output_path: str | None = None
    error: str | None = None


@dataclass
class WorkerStats:
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    busy_s: float = 0.0
    started_at: float = field(default_factory=time.time)


class _LeaseKeeper(threading.Thread):
    """Renews a claim's lease every third of its length until stopped; notes when it is lost."""

    def __init__(self, store: JobStore, claim: Claim, lease_seconds: float) -> None:
        super().__init__(name=f"lease-{claim.job['id']}", daemon=True)
        self.store = store
        self.claim = claim
        self.lease_seconds = lease_seconds
        self.lost = False
        self._done = threading.Event()

    def run(self) -> None:
        interval = max(0.05, self.lease_seconds / 3)
        while not self._done.wait(interval):
            try:
                if not self.store.renew(self.claim, self.lease_seconds):
                    self.lost = True
                    return
            except Exception:  # a busy or briefly unreachable database: try again next tick
                logger.warning("lease renewal failed", exc_info=True)

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
        on_event: Callable[[JobEvent], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.cache = cache or PipelineCache(
            backend=settings.backend,
            device=settings.device,
            threads=settings.threads,
            compute_units=settings.compute_units,
        )
        self.runner = runner
        self.on_event = on_event
        self.identity = worker_identity()
        self.stats = WorkerStats()
        self._stop = threading.Event()  # finish the current job, then exit
        self._abort = threading.Event()  # give the current job back now

    # Called from signal handlers: only set flags.
    def request_stop(self) -> None:
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> WorkerStats:
        """Work until stopped, until ``max_jobs``, or (burst) until no job is left."""
        s = self.settings
        logger.info("worker %s started", self.identity.name, extra={"action": "worker_started"})
        self._report("idle")
        done = 0
        while not self._stop.is_set():
            if s.max_jobs is not None and done >= s.max_jobs:
                break
            claim = self.store.claim(
                self.identity, lease_seconds=s.lease_seconds, prefer_model=self.cache.loaded_model
            )
            if claim is None:
                # In burst mode keep waiting while others still run jobs: their leases may
                # expire, and then those jobs are ours to finish.
                if s.burst and not self.store.has_active():
                    break
                self._stop.wait(s.poll_seconds)
                continue
            self._report("busy", claim.job["id"])
            self._work(claim)
            self._report("idle")
            done += 1
        self._report("stopped")
        logger.info(
            "worker %s stopped: %d succeeded, %d failed",
            self.identity.name,
            self.stats.succeeded,
            self.stats.failed,
            extra={"action": "worker_stopped"},
        )
        return self.stats

    def _work(self, claim: Claim) -> None:
        job = claim.job
        keeper = _LeaseKeeper(self.store, claim, self.settings.lease_seconds)
        keeper.start()
        t0 = time.perf_counter()
        log_extra = {"job_id": job["id"], "attempt": claim.attempt_id}
        try:
            output = self.runner(job, self.cache, lambda: self._abort.is_set() or keeper.lost)
        except JobInterrupted as exc:
            keeper.stop()
            if keeper.lost:
                self.store.release(claim, "lease lost")  # marks the attempt superseded
                self._emit(JobEvent(job["id"], "lost", time.perf_counter() - t0, error=str(exc)))
            else:
                self.store.release(claim, f"worker shut down ({exc})")
                self.stats.released += 1
                logger.info(
                    "job %s released", job["id"], extra={**log_extra, "action": "job_released"}
                )
                self._emit(JobEvent(job["id"], "released", time.perf_counter() - t0))
            return
        except Exception as exc:
            keeper.stop()
            error = f"{type(exc).__name__}: {exc}"
            status = self.store.fail(claim, error, retryable=not isinstance(exc, JobInputError))
            logger.warning(
                "job %s failed: %s", job["id"], error, extra={**log_extra, "action": "job_failed"}
            )
            if status == "failed":
                self.stats.failed += 1
            self._emit(
                JobEvent(
                    job["id"],
                    "failed" if status == "failed" else "retrying",
                    time.perf_counter() - t0,
                    error=error,
                )
            )
            return
        keeper.stop()
        path = image_path(self.settings.output_dir, job)
        # The image lands before the database says so: a crash in between leaves a file that
        # the retry overwrites with the same pixels, never a success with no file.
        write_atomic(path, output.png)
        if self.store.complete(claim, str(path), output.result):
            self.stats.succeeded += 1
            self.stats.busy_s += float(output.result.get("total_s") or 0.0)
            logger.info(
                "job %s succeeded in %.2fs",
                job["id"],
                output.result["total_s"],
                extra={**log_extra, "action": "job_succeeded", "path": str(path)},
            )
            self._emit(JobEvent(job["id"], "succeeded", time.perf_counter() - t0, str(path)))
        else:
            # The job was cancelled or finished by another worker meanwhile.
            if self.store.get_job(job["id"])["status"] != "succeeded":
                Path(path).unlink(missing_ok=True)
            logger.info(
                "job %s result dropped", job["id"], extra={**log_extra, "action": "job_superseded"}
            )
            self._emit(JobEvent(job["id"], "superseded", time.perf_counter() - t0))

    def _report(self, state: str, current_job: int | None = None) -> None:
        """This worker's row in the workers table, for status and the dashboard."""
        backend = self.cache.current
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
                        "model": self.cache.loaded_model,
                        "state": state,
                        "current_job": current_job,
                        "jobs_done": self.stats.succeeded,
                        "jobs_failed": self.stats.failed,
                        "busy_s": self.stats.busy_s,
                        "started_at": self.stats.started_at,
                        "last_seen": time.time(),
                    }
                ]
            )
        except Exception:  # status is best effort; the work is not
            logger.warning("could not update the workers table", exc_info=True)

    def _emit(self, event: JobEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
