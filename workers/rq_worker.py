"""The RQ worker that runs on every Mac (or Linux box): ``orchestrate worker --redis URL``.

It is an RQ ``SimpleWorker`` (no fork per job: RQ's forking worker would reload the model for
every job, and forking after Core ML/Metal is loaded crashes on macOS), adjusted for the
hazards RQ's own issues describe:

- it never pops several queues with one BLPOP (a job popped just before a crash is lost, rq#1716):
  it takes jobs one queue at a time with LMOVE into RQ's intermediate queue, preferring the
  queue of the model it has loaded;
- a thread keeps RQ's heartbeats (and ours) alive during a job, which a non-forking worker
  otherwise stops sending, so a long generation is not declared abandoned;
- it executes only ``workers.rq_worker.generate`` with RQ's JSON serializer: a job naming any
  other function is failed without being imported or run;
- the first SIGTERM/SIGINT finishes the current job, the second gives it back at the next
  denoising step; ``--max-jobs`` recycles the process (a service manager starts a new one);
- ``setproctitle`` is not used on macOS, where it crashes forked processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rq import Queue, SimpleWorker, get_current_job, worker_registration
from rq.exceptions import DequeueTimeout, DeserializationError
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from workers import rq_protocol as proto
from workers.backends import JobInputError, JobInterrupted
from workers.task import PipelineCache, TaskOutput, run_job

logger = logging.getLogger(__name__)

Runner = Callable[[dict[str, Any], PipelineCache, Callable[[], bool]], TaskOutput]


def default_runner(
    job: dict[str, Any], cache: PipelineCache, should_stop: Callable[[], bool]
) -> TaskOutput:
    return run_job(job, cache, should_stop=should_stop)


@dataclass
class WorkerStatsRQ:
    done: int = 0
    failed: int = 0
    busy_s: float = 0.0
    started_at: float = field(default_factory=time.time)


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and the like: RQ would silently store 'Unserializable return value'."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def plain_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_plain))


class OrchestrateWorker(SimpleWorker):
    """A non-forking RQ worker that keeps one pipeline loaded across jobs."""

    def __init__(
        self,
        *,
        connection: Any,
        cache: PipelineCache,
        name: str | None = None,
        model: str | None = None,
        runner: Runner = default_runner,
        heartbeat_interval: float = 5.0,
        heartbeat_ttl: int = 15,
        block_seconds: int = 2,
        image_ttl: int = 24 * 3600,
    ) -> None:
        host = socket.gethostname()
        super().__init__(
            [],
            connection=connection,
            name=name or f"{host}.{os.getpid()}.{uuid.uuid4().hex[:6]}",
            serializer=JSONSerializer,
            job_monitoring_interval=max(1, int(heartbeat_interval)),
        )
        self.cache = cache
        self.preferred_model = model
        self.runner = runner
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.block_seconds = block_seconds
        self.image_ttl = image_ttl
        self.host = host
        self.abort = threading.Event()
        self.stats = WorkerStatsRQ()
        self._current: dict[str, Any] | None = None

    def validate_queues(self) -> None:
        """Queues are found at run time (the coordinator creates one per model)."""

    # -- which queues, in which order ----------------------------------------------------------

    def _refresh_queues(self) -> None:
        names = sorted(
            n.decode() if isinstance(n, bytes) else n
            for n in self.connection.smembers(proto.QUEUES_KEY)
        )
        model = self.cache.loaded_model or self.preferred_model
        if model is not None:
            first = proto.queue_for(model)
            names = [first] + [n for n in names if n != first]
        if [q.name for q in self.queues] != names:
            self.queues = [
                Queue(n, connection=self.connection, serializer=self.serializer) for n in names
            ]
            self._ordered_queues = self.queues[:]
            # What `rq info` reads: the worker's queues and the per-queue worker sets.
            self.connection.hset(self.key, "queues", ",".join(names))
            worker_registration.register(self)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """One queue at a time, by LMOVE (never a multi-queue BLPOP); then block briefly on the
        preferred queue. ``timeout=None`` (burst) returns when every queue is empty;
        ``max_idle_time`` returns after that long without a job."""
        import redis

        self.set_state(WorkerStatus.IDLE)
        idle_since = time.monotonic()
        wait = 1.0
        while True:
            try:
                self.heartbeat()
                self.publish("idle")
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                self._refresh_queues()
                for queue in self._ordered_queues:
                    found = self._dequeue([queue], None)
                    if found is not None:
                        return found
                if timeout is None or self._stop_requested:
                    return None
                if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                    return None
                if self._ordered_queues:
                    try:
                        found = self._dequeue(self._ordered_queues[:1], self.block_seconds)
                    except DequeueTimeout:
                        continue
                    if found is not None:
                        return found
                else:
                    time.sleep(self.block_seconds)  # no queue exists yet: nothing to block on
                wait = 1.0
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                self.log.error("Redis unreachable (%s); retrying in %.0fs", exc, wait)
                time.sleep(wait)
                wait = min(wait * 2, 30.0)

    def _dequeue(self, queues: list[Queue], timeout: int | None) -> tuple[Job, Queue] | None:
        return self.queue_class.dequeue_any(
            queues,
            timeout,
            connection=self.connection,
            job_class=self.job_class,
            serializer=self.serializer,
            death_penalty_class=self.death_penalty_class,
        )

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        # Every job here came through LMOVE into the intermediate queue, whatever the queue count.
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    # -- running a job -------------------------------------------------------------------------

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        try:
            func_name = job.func_name  # JSON only: a pickled job never gets unpickled here
        except DeserializationError:
            func_name = "<not JSON: pickle or garbage>"
        if func_name != proto.TASK:
            # Refused before the function is imported: nothing of the job runs.
            message = f"refused: this worker runs only {proto.TASK}, not {func_name!r}"
            self.log.warning("job %s %s", job.id, message)
            IntermediateQueue(queue.key, self.connection).remove(job.id)
            self.handle_job_failure(job, queue, exc_string=message, execution=execution)
            return False
        keeper = _Heartbeat(self, job, execution)
        keeper.start()
        try:
            return super().perform_job(job, queue, execution)
        finally:
            keeper.stop()
            self._current = None

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """A second signal: give the current job back at its next step instead of killing it."""
        if self.get_state() == WorkerStatus.BUSY:
            self.log.warning("second signal: giving the current job back")
            self.abort.set()
            return
        raise SystemExit()

    def procline(self, message: str) -> None:
        if sys.platform == "darwin":  # setproctitle crashes forked processes on macOS
            self.log.debug(message)
            return
        super().procline(message)

    def publish(self, state: str) -> None:
        """This worker's status hash, read by the coordinator into the workers table."""
        backend = self.cache.current
        current = self._current or {}
        fields: dict[str, str | int | float] = {
            "name": self.name,
            "host": self.host,
            "pid": os.getpid(),
            "backend": getattr(backend, "name", "") or "",
            "device": getattr(backend, "device", "") or "",
            "model": self.cache.loaded_model or "",
            "state": state,
            "current_job": current.get("id", "") if state == "busy" else "",
            "jobs_done": self.stats.done,
            "jobs_failed": self.stats.failed,
            "busy_s": self.stats.busy_s,
            "started_at": self.stats.started_at,
            "last_seen": time.time(),
        }
        key = proto.WORKER_KEY + self.name
        with self.connection.pipeline() as p:
            p.hset(key, mapping=fields)  # type: ignore[arg-type]  # dict is invariant
            p.expire(key, max(60, int(self.block_seconds * 10)))
            p.execute()

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.publish("stopped")
        super().teardown()


class _Heartbeat(threading.Thread):
    """During a job: RQ's worker and job heartbeats, and our liveness key."""

    def __init__(self, worker: OrchestrateWorker, job: Job, execution: Any) -> None:
        super().__init__(name=f"heartbeat-{job.id}", daemon=True)
        self.worker = worker
        self.job = job
        self.execution = execution
        self._done = threading.Event()
        self._beat()

    def _beat(self) -> None:
        self.worker.connection.set(
            proto.heartbeat_key(self.job.id), self.worker.name, ex=self.worker.heartbeat_ttl
        )

    def run(self) -> None:
        while not self._done.wait(self.worker.heartbeat_interval):
            try:
                self._beat()
                if self.execution is not None and self.job.started_at is not None:
                    self.worker.maintain_heartbeats(self.job, self.execution)
                self.worker.publish("busy")
            except Exception:  # Redis briefly away: the next beat tries again
                logger.warning("heartbeat failed", exc_info=True)

    def stop(self) -> None:
        self._done.set()
        self.join()


# -- the task ------------------------------------------------------------------------------------

_worker: OrchestrateWorker | None = None  # the worker of this process (set by run_worker)


def generate(payload: dict[str, Any]) -> dict[str, Any]:
    """The one task: generate a job's image, put the PNG in Redis, push the result event."""
    worker = _worker
    job = get_current_job()
    if worker is None or job is None:
        raise RuntimeError("generate runs only inside `orchestrate worker`")
    conn = worker.connection
    rq_id = job.id
    worker._current = payload
    identity = {"worker": worker.name, "host": worker.host, "pid": os.getpid()}
    conn.rpush(
        proto.EVENTS_KEY,
        proto.encode_event("started", rq_id, job_id=payload["id"], at=time.time(), **identity),
    )

    def should_stop() -> bool:
        return worker.abort.is_set() or conn.exists(proto.cancel_key(rq_id)) > 0

    t0 = time.perf_counter()
    try:
        out = worker.runner(payload, worker.cache, should_stop)
    except JobInterrupted as exc:
        _finish(
            conn,
            rq_id,
            proto.encode_event("released", rq_id, job_id=payload["id"], error=str(exc), **identity),
        )
        raise
    except Exception as exc:
        worker.stats.failed += 1
        event = proto.encode_event(
            "failed",
            rq_id,
            job_id=payload["id"],
            error=f"{type(exc).__name__}: {exc}",
            retryable=not isinstance(exc, JobInputError),
            **identity,
        )
        _finish(conn, rq_id, event)
        raise
    result = plain_json(out.result)
    digest = hashlib.sha256(out.png).hexdigest()
    event = proto.encode_event(
        "result",
        rq_id,
        job_id=payload["id"],
        sha256=digest,
        size=len(out.png),
        result=result,
        **identity,
    )
    _finish(conn, rq_id, event, png=out.png, ttl=worker.image_ttl)
    worker.stats.done += 1
    worker.stats.busy_s += time.perf_counter() - t0
    return {"job_id": payload["id"], "sha256": digest, "bytes": len(out.png), **result}


def _finish(conn: Any, rq_id: str, event: bytes, *, png: bytes | None = None, ttl: int = 0) -> None:
    """Image, event and the end of our heartbeat in one transaction: the coordinator never
    sees a job without a heartbeat whose event is not already on the list."""
    with conn.pipeline(transaction=True) as p:
        if png is not None:
            p.set(proto.image_key(rq_id), png, ex=ttl)
        p.rpush(proto.EVENTS_KEY, event)
        p.delete(proto.heartbeat_key(rq_id))
        p.execute()


def run_worker(
    url: str,
    *,
    cache: PipelineCache,
    model: str | None = None,
    burst: bool = False,
    burst_idle: int = 5,
    max_jobs: int | None = None,
    name: str | None = None,
    runner: Runner = default_runner,
    heartbeat_interval: float = 5.0,
    heartbeat_ttl: int = 15,
    logging_level: str = "INFO",
) -> OrchestrateWorker:
    """Connect, optionally preload ``model``, and work until stopped (or idle, with ``burst``)."""
    global _worker
    conn = proto.connect(url)
    if model is not None:
        cache.get(model)
    worker = OrchestrateWorker(
        connection=conn,
        cache=cache,
        name=name,
        model=model,
        runner=runner,
        heartbeat_interval=heartbeat_interval,
        heartbeat_ttl=heartbeat_ttl,
    )
    _worker = worker
    # `burst` here means: quit after `burst_idle` seconds without a job. RQ's own burst quits the
    # moment the queues are empty, which the coordinator's small window makes common mid-batch.
    worker.work(
        burst=False,
        max_jobs=max_jobs,
        max_idle_time=burst_idle if burst else None,
        logging_level=logging_level,
    )
    return worker
