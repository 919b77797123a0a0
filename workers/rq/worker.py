"""The RQ worker that runs on every Mac (or Linux box): ``orchestrate worker --redis URL``.

It is an RQ ``SimpleWorker`` (no fork per job: RQ's forking worker would reload the model for
every job, and forking after Core ML/Metal is loaded crashes on macOS), adjusted for the
hazards RQ's own issues describe and for an unattended night:

- it never pops several queues with one BLPOP (a job popped just before a crash is lost, rq#1716):
  it takes jobs one queue at a time with LMOVE into RQ's intermediate queue, preferring the
  queue of the model it has loaded;
- it runs a job itself, not through ``job.perform()``: only ``workers.rq.worker.generate``,
  with one payload exactly as the coordinator makes it (signed, where a secret is set), and
  nothing a job may carry besides (callbacks, webhooks, dependencies, repeats) is imported,
  called or contacted: such a job is refused, and the refusal reported to the coordinator;
- a thread keeps RQ's heartbeats (and ours) alive during a job, which a non-forking worker
  otherwise stops sending, so a long generation is not declared abandoned;
- **a Redis outage is waited out**: a finished result is kept in memory and delivered when
  Redis is back (the heartbeat keeps the job ours meanwhile), a busy worker goes on with its
  job, an idle one reconnects; the model stays loaded;
- the first SIGTERM/SIGINT finishes the current job, the second gives it back at the next
  denoising step; an idle worker stops within a second or two (RQ's command thread is
  stopped here, with a bound, whatever redis-py does); ``--max-jobs`` recycles the process
  (a service manager starts a new one);
- ``setproctitle`` is not used on macOS, where it crashes forked processes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
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
from rq.exceptions import DequeueTimeout, StopRequested
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException
from rq.worker import WorkerStatus

from contract import faults
from contract import protocol as proto
from contract.errors import JobInputError, JobInterrupted, QualityGateFailed
from contract.status import AttemptStatus
from contract.waiting import FOREVER, Backoff, Patience, patiently
from workers.batching import batch_limit
from workers.rq.batches import take_companions
from workers.rq.heartbeats import Announcer, JobHeartbeat
from workers.rq.vetting import vet
from workers.task import (
    BatchRunner,
    Outcome,
    PipelineCache,
    Runner,
    TaskOutput,
    batch_runner_for,
    default_runner,
)

logger = logging.getLogger(__name__)

DELIVER_FOR_S = 3600.0  # how long a finished result waits for Redis before it is dropped
CANCEL_CHECK_S = 0.5  # at most this often a job asks Redis whether it was cancelled
# RQ's command-channel thread waits this long for a message before it looks whether to stop
# (RQ's own 60 s wait, joined by redis-py 8.2's stop(), held a stopping worker for a minute),
# and a stopping worker waits at most this long for it.
PUBSUB_POLL_S = 1.0
PUBSUB_STOP_S = 5.0


@dataclass
class _Member:
    """One job of the batch a worker runs: RQ's job, its queue and execution, its payload."""

    job: Job
    queue: Queue
    execution: Any
    payload: dict[str, Any]


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


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class OrchestrateWorker(SimpleWorker):
    """A non-forking RQ worker that keeps one pipeline loaded across jobs and rides out
    Redis outages."""

    def __init__(
        self,
        *,
        connection: Any,
        cache: PipelineCache,
        name: str | None = None,
        model: str | None = None,
        runner: Runner = default_runner,
        batch_runner: BatchRunner | None = None,
        batch_size: int | str = 1,
        heartbeat_interval: float = 5.0,
        heartbeat_ttl: int = 15,
        block_seconds: int = 2,
        image_ttl: int = 24 * 3600,
        secret: bytes | None = None,
        deliver_for: float = DELIVER_FOR_S,
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
        if batch_runner is None:
            # RQ's job timeout ends the whole call: never one job's failure.
            batch_runner = batch_runner_for(runner, (JobTimeoutException,))
        self.batch_runner = batch_runner
        self.batch_size = batch_size
        self.batch_capacity = 1 if batch_size == "auto" else int(batch_size)  # published
        self._jobs_left: int | None = None  # under --max-jobs
        self._performed = 0  # jobs the last execute_job ran (a batch: more than one)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.block_seconds = block_seconds
        self.image_ttl = image_ttl
        self.secret = secret
        self.deliver_for = deliver_for
        self.host = host
        self.abort = threading.Event()
        self.stats = WorkerStatsRQ()
        self._current: dict[str, Any] | None = None
        self._outage: str | None = None  # the Redis error being waited out, if any
        self._waiting = proto.Waiting(logger.error, _address(connection), every=5.0)
        self.no_queue_warning_s = 60.0
        self._warned_no_queue = False

    def validate_queues(self) -> None:
        """Queues are found at run time (the coordinator creates one per model)."""

    # -- waiting out Redis -----------------------------------------------------------------------

    def _redis_down(self, exc: BaseException, wait: float) -> None:
        self._waiting.failed(exc, wait)
        self._outage = str(exc)

    def _redis_up(self) -> None:
        if self._outage is not None:
            waited = self._waiting.ended() or 0.0
            logger.warning("Redis is back after %.0fs (was: %s)", waited, self._outage)
            self._outage = None

    def _until_redis(self, fn: Callable[[], Any], *, patience: Patience = FOREVER) -> Any:
        """``fn()``, retried with ``proto.REDIS_BACKOFF`` while Redis is away; None if
        ``patience`` runs out first."""
        try:
            value = patiently(
                fn,
                retry_on=_redis_errors(),
                backoff=proto.REDIS_BACKOFF,
                patience=patience,
                on_failure=self._redis_down,
            )
        except _redis_errors():
            return None
        self._redis_up()
        return value

    # -- the loop --------------------------------------------------------------------------------

    def work(  # type: ignore[override]
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        max_jobs: int | None = None,
        max_idle_time: int | None = None,
        **_: Any,
    ) -> bool:
        """RQ's work loop, except that a Redis error never ends it: the worker waits for
        Redis, then goes on with the job it holds (or takes the next one)."""
        from rq.logutils import setup_loghandlers

        setup_loghandlers(logging_level, name="rq.worker")
        self._until_redis(self._register)
        self.subscribe()
        self._install_signal_handlers()
        completed = 0
        self._jobs_left = max_jobs
        held: tuple[Job, Queue] | None = None  # dequeued, but Redis failed before it ran
        try:
            while not self._stop_requested:
                try:
                    if held is None:
                        if self.should_run_maintenance_tasks:
                            self.run_maintenance_tasks()
                        held = self.dequeue_job_and_maintain_ttl(
                            None if burst else self.dequeue_timeout, max_idle_time
                        )
                        if held is None:
                            break
                    job, queue = held
                    if not self.connection.exists(job.key):
                        held = None  # Redis lost it meanwhile: the coordinator dispatches again
                        continue
                    self._performed = 1
                    self.execute_job(job, queue)
                    held = None
                    completed += self._performed
                    if max_jobs is not None:
                        self._jobs_left = max_jobs - completed
                    if max_jobs is not None and completed >= max_jobs:
                        logger.info("finished %d jobs, quitting", completed)
                        break
                except _redis_errors() as exc:
                    self._redis_down(exc, 1.0)
                    time.sleep(1.0)
                except StopRequested:
                    break
        finally:
            with contextlib.suppress(Exception):
                self.teardown()
        return bool(completed)

    def _register(self) -> None:
        # ValueError: a birth registered by an earlier try whose reply was lost; it is ours.
        with contextlib.suppress(ValueError):
            self.register_birth()
        self.set_state(WorkerStatus.STARTED)

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
        idle_since = time.monotonic()
        failed = 0  # tries in a row that Redis failed
        while True:
            try:
                self.set_state(WorkerStatus.IDLE)
                self.heartbeat()
                self.publish("idle")
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
                    self._no_queue_for(time.monotonic() - idle_since)
                self._redis_up()
                failed = 0
            except _redis_errors() as exc:
                wait = proto.REDIS_BACKOFF.delay(failed)
                failed += 1
                self._redis_down(exc, wait)
                time.sleep(wait)

    def _no_queue_for(self, seconds: float) -> None:
        """Say once when this Redis database has had no queue of an orchestrate coordinator
        for a while: a worker pointed at the wrong database would otherwise wait in silence."""
        if seconds < self.no_queue_warning_s or self._warned_no_queue:
            return
        self._warned_no_queue = True
        logger.warning(
            "no queue of an orchestrate coordinator on Redis %s database %s for %.0f s: is "
            "the coordinator running, and on the same Redis URL and database number?",
            _address(self.connection),
            self.connection.connection_pool.connection_kwargs.get("db", 0),
            seconds,
        )

    def _dequeue(self, queues: list[Queue], timeout: int | None) -> tuple[Job, Queue] | None:
        return self.queue_class.dequeue_any(
            queues,
            timeout,
            connection=self.connection,
            job_class=self.job_class,
            serializer=self.serializer,
            death_penalty_class=self.death_penalty_class,
        )

    # -- running a job ---------------------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Beat at once: between taking a job and starting it, the coordinator sees it only
        # by this key (RQ's intermediate queue does not count as alive).
        if proto.is_dispatch_id(job.id):
            self.connection.set(proto.heartbeat_key(job.id), self.name, ex=self.heartbeat_ttl)
        super().execute_job(job, queue)

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        try:
            payload = vet(job, self.secret)
        except proto.BadMessage as exc:
            self._refuse(job, queue, str(exc))
            return False
        members = [_Member(job, queue, execution, payload), *self._companions(queue, payload)]
        self._performed = len(members)
        self._current = payload
        self.publish_quietly("busy")  # now, not at the first heartbeat: short jobs show too
        for i, m in enumerate(members):
            # RQ's bookkeeping: into the started registry (the dequeued job also out of the
            # intermediate queue; a companion was taken straight out of its queue).
            self._until_redis(functools.partial(self.prepare_job_execution, m.job, i == 0))
            m.job.started_at = _now()
        keepers = [JobHeartbeat(self, m.job, m.execution) for m in members]
        for keeper in keepers:
            keeper.start()
        outcomes = [AttemptStatus.FAILED] * len(members)
        try:
            timeout = sum(m.job.timeout or self.queue_class.DEFAULT_TIMEOUT for m in members)
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                outcomes = self.run_payloads([(m.job.id, m.payload) for m in members])
        except JobTimeoutException:
            for m in members:
                self._deliver(
                    m.job.id,
                    self._event("failed", m.job.id, m.payload, error="timed out", retryable=True),
                )
        finally:
            for keeper in keepers:
                keeper.stop()
            self._current = None
        for m, outcome in zip(members, outcomes, strict=True):
            m.job.ended_at = _now()
            self._bookkeep(m.job, m.queue, m.execution, outcome)
        return outcomes[0] == AttemptStatus.SUCCEEDED

    def _companions(self, queue: Queue, payload: dict[str, Any]) -> list[_Member]:
        """Jobs of ``queue`` to run with ``payload``'s in one pipeline call (workers.rq.batches),
        up to the batch size and within --max-jobs. Redis failing here is no reason to wait:
        the first job runs with what was taken (a job taken but not started stops
        heartbeating, and the coordinator dispatches it again)."""
        limit = batch_limit(self.batch_size, self.cache.current, payload)
        self.batch_capacity = max(self.batch_capacity, limit)
        limit -= 1
        if self._jobs_left is not None:
            limit = min(limit, self._jobs_left - 1)
        if limit <= 0:
            return []
        members: list[_Member] = []
        try:
            for job, companion in take_companions(self, queue, payload, limit):
                members.append(_Member(job, queue, self.prepare_execution(job), companion))
        except _redis_errors() as exc:
            logger.warning("could not take more jobs into a batch: %s", exc)
        return members

    def _bookkeep(self, job: Job, queue: Queue, execution: Any, outcome: str) -> None:
        """RQ's own records of the job (``rq info``, its registries). Best effort: what
        counts was delivered to the coordinator already."""
        try:
            if outcome == AttemptStatus.SUCCEEDED:
                job._status = "finished"  # type: ignore[assignment]
                self.handle_job_success(job, queue, queue.started_job_registry, execution)
            else:
                self.handle_job_failure(job, queue, exc_string=outcome, execution=execution)
        except Exception as exc:
            logger.warning(
                "job %s: RQ's bookkeeping failed (%s); the result is delivered", job.id, exc
            )

    def _refuse(self, job: Job, queue: Queue, reason: str) -> None:
        """Fail a job without running, importing or contacting anything it names, and tell
        the coordinator (it counts refusals as dead letters)."""
        message = f"refused: {reason}"
        logger.warning("job %s %s", job.id, message)
        event = proto.encode_event(
            "refused",
            str(job.id)[:200],
            secret=self.secret,
            error=reason[:500],
            worker=self.name,
            host=self.host,
            pid=os.getpid(),
        )
        with self.connection.pipeline() as p:
            p.lrem(queue.intermediate_queue_key, 1, job.id)
            p.delete(proto.heartbeat_key(job.id))
            job.set_status("failed", pipeline=p)  # type: ignore[arg-type]
            queue.failed_job_registry.add(job, ttl=7 * 24 * 3600, exc_string=message, pipeline=p)
            Result.create_failure(job, 7 * 24 * 3600, message, worker_name=self.name, pipeline=p)
            p.rpush(proto.EVENTS_KEY, event)
            p.execute()

    def run_payload(self, rq_id: str, payload: dict[str, Any]) -> AttemptStatus:
        """Generate a checked payload's image and deliver the outcome to the coordinator:
        ``succeeded``, ``failed`` or ``released``."""
        return self.run_payloads([(rq_id, payload)])[0]

    def run_payloads(self, members: list[tuple[str, dict[str, Any]]]) -> list[AttemptStatus]:
        """Generate the images of checked payloads in one pipeline call and deliver each
        outcome on its own: ``succeeded``, ``failed`` or ``released``, in order."""
        self._current = members[0][1]
        conn = self.connection

        def started() -> None:
            with conn.pipeline(transaction=False) as p:
                for rq_id, payload in members:
                    p.rpush(proto.EVENTS_KEY, self._event("started", rq_id, payload))
                p.execute()

        # A result counts without its "started": give up after a few tries.
        self._until_redis(started, patience=Patience(tries=4))
        cancelled: set[str] = set()
        last_check = [0.0]

        def should_stop() -> bool:
            """A shutdown's second signal, or every job of the call cancelled."""
            if self.abort.is_set():
                return True
            now = time.monotonic()
            if now - last_check[0] >= CANCEL_CHECK_S:
                last_check[0] = now
                try:
                    with conn.pipeline(transaction=False) as p:
                        for rq_id, _ in members:
                            p.exists(proto.cancel_key(rq_id))
                        flags = p.execute()
                except _redis_errors():
                    flags = []  # Redis away: go on; the results wait for it
                cancelled.update(r for (r, _), f in zip(members, flags, strict=False) if f)
            return len(cancelled) == len(members)

        t0 = time.perf_counter()
        outcomes = self.batch_runner([p for _, p in members], self.cache, should_stop)
        busy = (time.perf_counter() - t0) / len(members)
        return [
            self._report(rq_id, payload, out, rq_id in cancelled, busy)
            for (rq_id, payload), out in zip(members, outcomes, strict=True)
        ]

    def _report(
        self, rq_id: str, payload: dict[str, Any], out: Outcome, cancelled: bool, busy: float
    ) -> AttemptStatus:
        """Deliver one job's outcome; what it was."""
        if cancelled and isinstance(out, TaskOutput):
            out = JobInterrupted("cancelled while the rest of its batch ran")
        if isinstance(out, JobInterrupted):
            self._deliver(rq_id, self._event("released", rq_id, payload, error=str(out)))
            return AttemptStatus.RELEASED
        if isinstance(out, Exception):
            self.stats.failed += 1
            # A failed quality gate says what it tried, for the attempt's record.
            tried = {"scores": out.scores} if isinstance(out, QualityGateFailed) else {}
            event = self._event(
                "failed",
                rq_id,
                payload,
                error=f"{type(out).__name__}: {out}",
                retryable=not isinstance(out, JobInputError),
                **tried,
            )
            self._deliver(rq_id, event)
            return AttemptStatus.FAILED
        result = plain_json(out.result)
        digest = hashlib.sha256(out.png).hexdigest()
        event = self._event(
            "result", rq_id, payload, sha256=digest, size=len(out.png), result=result
        )
        faults.point("worker.result_ready")
        if not self._deliver(rq_id, event, png=out.png):
            return AttemptStatus.FAILED
        self.stats.done += 1
        self.stats.busy_s += busy
        return AttemptStatus.SUCCEEDED

    def _event(self, kind: str, rq_id: str, payload: dict[str, Any], **fields: Any) -> bytes:
        return proto.encode_event(
            kind,
            rq_id,
            secret=self.secret,
            job_id=payload["id"],
            token=payload["token"],
            worker=self.name,
            host=self.host,
            pid=os.getpid(),
            **fields,
        )

    def _deliver(self, rq_id: str, event: bytes, *, png: bytes | None = None) -> bool:
        """Image, event and the end of our heartbeat in one transaction (the coordinator never
        sees a job without a heartbeat whose event is not already on the list), retried while
        Redis is away, for up to ``deliver_for`` seconds or until a second signal."""

        def send() -> bool:
            with self.connection.pipeline(transaction=True) as p:
                if png is not None:
                    p.set(proto.image_key(rq_id), png, ex=self.image_ttl)
                p.rpush(proto.EVENTS_KEY, event)
                p.delete(proto.heartbeat_key(rq_id))
                p.execute()
            return True

        patience = Patience(seconds=self.deliver_for, stop=self.abort.is_set)
        sent = self._until_redis(send, patience=patience)
        if not sent:
            logger.error("job %s: gave up delivering its outcome (Redis away too long)", rq_id)
        return bool(sent)

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """A second signal: give the current job back at its next step instead of killing it."""
        if self._current is not None:
            logger.warning("second signal: giving the current job back")
            self.abort.set()
            return
        raise SystemExit()

    def procline(self, message: str) -> None:
        if sys.platform == "darwin":  # setproctitle crashes forked processes on macOS
            self.log.debug(message)
            return
        super().procline(message)

    @property
    def beat_s(self) -> float:
        """The longest this worker goes between publishes while alive: its heartbeat during a
        job (or a model load), its poll of the queues when idle."""
        return max(self.heartbeat_interval, float(self.block_seconds))

    @property
    def status_ttl(self) -> int:
        """Seconds the status hash lives after each publish."""
        return max(60, int(self.beat_s * 10))

    def publish(self, state: str) -> None:
        """This worker's status hash, read by the coordinator into the workers table. A busy
        worker whose model is being loaded says ``loading``."""
        backend = self.cache.current
        current = self._current or {}
        if state == "busy" and self.cache.loading is not None:
            state = "loading"
        fields: dict[str, str | int | float] = {
            "name": self.name,
            "host": self.host,
            "pid": os.getpid(),
            "backend": getattr(backend, "name", "") or "",
            "device": getattr(backend, "device", "") or "",
            "model": self.cache.loading or self.cache.loaded_model or "",
            "state": state,
            "current_job": current.get("id", "") if state in ("busy", "loading") else "",
            "jobs_done": self.stats.done,
            "jobs_failed": self.stats.failed,
            "busy_s": self.stats.busy_s,
            "started_at": self.stats.started_at,
            "last_seen": time.time(),
            "heartbeat_s": self.beat_s,
            "ttl_s": self.status_ttl,  # what the coordinator measures "last seen" by
            # How many jobs it runs at once: the coordinator keeps that many in flight for it.
            "batch_size": self.batch_capacity,
        }
        key = proto.WORKER_KEY + self.name
        with self.connection.pipeline() as p:
            p.hset(key, mapping=fields)  # type: ignore[arg-type]  # dict is invariant
            p.expire(key, self.status_ttl)
            p.execute()

    def publish_quietly(self, state: str) -> None:
        """``publish``, where Redis being away is no reason to stop (the next beat says it)."""
        with contextlib.suppress(*_redis_errors()):
            self.publish(state)

    def subscribe(self) -> None:
        """RQ's command channel (``rq suspend``, ``send_shutdown_command``...), read by a
        thread that looks every PUBSUB_POLL_S whether it should stop."""
        self.log.info("subscribing to channel %s", self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ: None
            sleep_time=PUBSUB_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def unsubscribe(self) -> None:
        """Stop the command thread within PUBSUB_STOP_S, whatever redis-py's ``stop()`` does:
        up to 8.1 it only lowers a flag, 8.2 joins the thread without a bound by default. No
        UNSUBSCRIBE is sent: its reply could wake the thread before the flag is down, to wait
        again; closing the connection ends the subscription."""
        thread, pubsub = self.pubsub_thread, self.pubsub
        self.pubsub_thread = None
        if thread is None or pubsub is None:
            return
        self.log.info("unsubscribing from channel %s", self.pubsub_channel_name)
        if "timeout" in inspect.signature(thread.stop).parameters:
            thread.stop(timeout=0)
        else:
            thread.stop()
        thread.join(PUBSUB_STOP_S)
        if thread.is_alive():  # a daemon thread: it ends with the process
            logger.warning("RQ's command thread did not stop within %.0f s", PUBSUB_STOP_S)
            return
        with contextlib.suppress(Exception):
            pubsub.close()

    def teardown(self) -> None:
        if self._outage is not None:
            # Redis is away: no goodbye (each call could wait out its connect timeout); the
            # worker's keys expire, and the coordinator shows it stale, then gone.
            self.unsubscribe()
            return
        with contextlib.suppress(Exception):
            self.publish("stopped")
        super().teardown()


def _now() -> Any:
    from rq.utils import now

    return now()


def _address(conn: Any) -> str:
    """Where a client connects (``host:port``, or a socket path), for messages."""
    where = conn.connection_pool.connection_kwargs
    if "path" in where:
        return str(where["path"])
    return f"{where.get('host', 'localhost')}:{where.get('port', 6379)}"


def _retry_redis(fn: Callable[[], Any], where: str, every: float = 2.0) -> Any:
    """``fn()``, waiting while Redis is away (and saying so, at a growing interval)."""
    waiting = proto.Waiting(logger.error, where, every=every)
    return patiently(
        fn,
        retry_on=_redis_errors(),
        backoff=Backoff.every(every),
        on_failure=lambda exc, _delay: waiting.failed(exc),
    )


# -- the task ------------------------------------------------------------------------------------

_worker: OrchestrateWorker | None = None  # the worker of this process (set by run_worker)


def generate(payload: dict[str, Any]) -> dict[str, Any]:
    """The one task: generate a job's image and deliver it. Runs only inside
    ``orchestrate worker``, which calls it for a payload it has checked."""
    worker = _worker
    job = get_current_job()
    if worker is None or job is None:
        raise RuntimeError("generate runs only inside `orchestrate worker`")
    return {"outcome": worker.run_payload(job.id, proto.check_payload(payload, worker.secret))}


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
    batch_size: int | str = 1,
    heartbeat_interval: float = 5.0,
    heartbeat_ttl: int = 15,
    logging_level: str = "INFO",
    secret: bytes | None = None,
    block_seconds: int = 2,
) -> OrchestrateWorker:
    """Connect, optionally preload ``model``, and work until stopped (or idle, with ``burst``)."""
    global _worker
    conn = proto.connect_patiently(url, say=logger.error)

    def make() -> OrchestrateWorker:
        return OrchestrateWorker(
            connection=conn,
            cache=cache,
            name=name,
            model=model,
            runner=runner,
            batch_size=batch_size,
            heartbeat_interval=heartbeat_interval,
            heartbeat_ttl=heartbeat_ttl,
            secret=secret if secret is not None else proto.secret_from_env(),
            block_seconds=block_seconds,
        )

    worker = _retry_redis(make, _address(conn))
    _worker = worker
    if model is not None:
        cache.loading = model  # said at once: the announcer's first beat may come first
        try:
            with Announcer(worker, "loading"):
                cache.get(model)
        except BaseException:
            worker.publish_quietly("stopped")
            raise
    # `burst` here means: quit after `burst_idle` seconds without a job. RQ's own burst quits the
    # moment the queues are empty, which the coordinator's small window makes common mid-batch.
    worker.work(
        burst=False,
        max_jobs=max_jobs,
        max_idle_time=burst_idle if burst else None,
        logging_level=logging_level,
    )
    return worker
