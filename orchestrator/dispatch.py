"""The coordinator: SQLite stays the source of truth while RQ workers on other machines do the work.

It moves jobs from ``pending`` to ``queued`` into per-model RQ queues, a bounded window at a
time (about two per live worker), so priority, cancel and retry keep acting on SQLite. Workers
push events to one Redis list; the coordinator moves each to a processing list, acts on it,
then deletes it, so a coordinator killed mid-event handles it again on restart (recording is
idempotent: a result counts only while its dispatch still holds the job).

Liveness is judged here, not by RQ: a dispatched job is accounted for while it waits in its
queue or its worker's heartbeat key lives. One unaccounted for ``lost_after`` seconds (worker
killed, Redis restarted or flushed, a job popped and dropped) is put back to pending and
dispatched again; a job that never started does not use up an attempt.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.hooks import Hooks, batch_summary
from orchestrator.local import JobEvent
from orchestrator.output import image_path, write_atomic
from orchestrator.store import Claim, JobStore
from workers import rq_protocol as proto

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorSettings:
    output_dir: Path
    window: int | None = None  # fixed number of jobs in Redis; None: per_worker x live workers
    per_worker: int = 2
    min_window: int = 2
    lost_after: float = 5.0
    reconcile_every: float = 1.0
    workers_every: float = 2.0
    poll: float = 0.2
    job_timeout: int = 3600
    result_ttl: int = 3600
    until_done: bool = False
    batch_events: int = 200


class Coordinator:
    def __init__(
        self,
        store: JobStore,
        redis: Any,
        settings: CoordinatorSettings,
        *,
        on_event: Callable[[JobEvent], None] | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.store = store
        self.hooks = hooks or Hooks()
        self._active_batches = store.active_batches()
        self.redis = redis
        self.settings = settings
        self.on_event = on_event
        self.in_flight: dict[str, Claim] = {}
        self.started: set[str] = set()
        self.live_workers = 0
        self._missing_since: dict[str, float] = {}
        self._stop = threading.Event()
        self.processed = 0
        for claim, status in store.in_flight(proto.DISPATCH_PREFIX):
            rq_id = claim.lease_owner[len(proto.DISPATCH_PREFIX) :]
            self.in_flight[rq_id] = claim
            if status == "running":
                self.started.add(rq_id)

    def request_stop(self) -> None:
        self._stop.set()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped, or (``until_done``) until no job is pending, queued or running.
        Returns 0, or 1 when any job failed (``until_done``)."""
        import redis

        s = self.settings
        next_reconcile = next_workers = 0.0
        wait = 1.0
        self._handle_events(self._recover_processing())
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                unaccounted = None
                if now >= next_reconcile:
                    unaccounted = self._unaccounted()
                    next_reconcile = now + s.reconcile_every
                if now >= next_workers:
                    self._sync_workers()
                    self._finished_batches()
                    next_workers = now + s.workers_every
                self._handle_events(self._take_events(block=bool(self.in_flight)))
                if unaccounted is not None:
                    self._resolve(unaccounted)
                self._dispatch()
                wait = 1.0
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                logger.error("Redis unreachable (%s); retrying in %.0fs", exc, wait)
                self._stop.wait(wait)
                wait = min(wait * 2, 30.0)
                continue
            if s.until_done and not self.in_flight and not self.store.has_active():
                break
            if not self.in_flight:
                self._stop.wait(s.poll)  # nothing out there: look for new submissions shortly
        self._finished_batches()
        try:
            self._sync_workers()
        except Exception:  # Redis gone at the very end: the table keeps its last view
            logger.warning("could not read the workers' status", exc_info=True)
        return 1 if s.until_done and self.store.counts()["failed"] else 0

    # -- dispatch ----------------------------------------------------------------------------

    def window(self) -> int:
        s = self.settings
        if s.window is not None:
            return s.window
        return max(s.min_window, s.per_worker * self.live_workers)

    def _dispatch(self) -> int:
        from rq import Queue
        from rq.serializers import JSONSerializer

        need = self.window() - len(self.in_flight)
        if need <= 0:
            return 0
        token = secrets.token_hex(3)
        claims = self.store.dispatch(
            need,
            lambda job: f"{proto.DISPATCH_PREFIX}orc-{job['id']}-{job['attempts']}-{token}",
        )
        if not claims:
            return 0
        by_queue: dict[str, list[Any]] = {}
        for claim in claims:
            rq_id = claim.lease_owner[len(proto.DISPATCH_PREFIX) :]
            job = claim.job
            by_queue.setdefault(proto.queue_for(job["model"]), []).append(
                Queue.prepare_data(
                    proto.TASK,
                    args=(job,),
                    job_id=rq_id,
                    timeout=self.settings.job_timeout,
                    result_ttl=self.settings.result_ttl,
                    failure_ttl=7 * 24 * 3600,
                    description=f"job {job['id']}: {job['prompt'][:60]}",
                )
            )
        # SQLite said `queued` first: if we die before this, the jobs come back as lost.
        with self.redis.pipeline() as p:
            for name, datas in by_queue.items():
                Queue(name, connection=self.redis, serializer=JSONSerializer).enqueue_many(
                    datas, pipeline=p
                )
                p.sadd(proto.QUEUES_KEY, name)
            p.execute()
        for claim in claims:
            self.in_flight[claim.lease_owner[len(proto.DISPATCH_PREFIX) :]] = claim
        logger.debug("dispatched %d jobs", len(claims), extra={"action": "dispatched"})
        return len(claims)

    # -- events ------------------------------------------------------------------------------

    def _recover_processing(self) -> list[bytes]:
        """Events a previous coordinator took but may not have finished handling."""
        return list(self.redis.lrange(proto.PROCESSING_KEY, 0, -1))

    def _take_events(self, *, block: bool) -> list[bytes]:
        first = (
            self.redis.blmove(
                proto.EVENTS_KEY, proto.PROCESSING_KEY, self.settings.poll, "LEFT", "RIGHT"
            )
            if block
            else self.redis.lmove(proto.EVENTS_KEY, proto.PROCESSING_KEY, "LEFT", "RIGHT")
        )
        if first is None:
            return []
        events = [first]
        with self.redis.pipeline(transaction=False) as p:
            for _ in range(self.settings.batch_events - 1):
                p.lmove(proto.EVENTS_KEY, proto.PROCESSING_KEY, "LEFT", "RIGHT")
            events.extend(e for e in p.execute() if e is not None)
        return events

    def _handle_events(self, raws: list[bytes]) -> None:
        if not raws:
            return
        for raw in raws:
            try:
                self._handle(proto.decode_event(raw))
            except ValueError:
                logger.error("dropping a malformed event: %r", raw[:200])
        with self.redis.pipeline(transaction=False) as p:
            for raw in raws:
                p.lrem(proto.PROCESSING_KEY, 1, raw)
            p.execute()
        self.processed += len(raws)

    def _handle(self, event: dict[str, Any]) -> None:
        rq_id = event["rq_id"]
        kind = event["type"]
        claim = self.in_flight.get(rq_id)
        if claim is None:
            # A late or repeated event for a dispatch that no longer holds its job.
            if kind == "result":
                self.redis.delete(proto.image_key(rq_id))
                logger.info("late result %s dropped", rq_id, extra={"action": "late_result"})
            return
        job_id = claim.job["id"]
        if kind == "started":
            self.started.add(rq_id)
            self.store.mark_started(
                claim,
                worker=event["worker"],
                host=event["host"],
                pid=event.get("pid"),
                at=event["at"],
            )
            return
        del self.in_flight[rq_id]
        self._missing_since.pop(rq_id, None)
        self.started.discard(rq_id)
        if kind == "result":
            self._record_result(claim, rq_id, event)
        elif kind == "failed":
            status = self.store.fail(claim, event["error"], retryable=event.get("retryable", True))
            logger.warning("job %s failed on %s: %s", job_id, event.get("worker"), event["error"])
            self._emit(
                JobEvent(
                    job_id,
                    "failed" if status == "failed" else "retrying",
                    0.0,
                    error=event["error"],
                )
            )
        elif kind == "released":
            self.store.release(claim, f"worker {event.get('worker')} shut down")
            self._emit(JobEvent(job_id, "released", 0.0))
        else:
            logger.error("unknown event type %r for %s", kind, rq_id)

    def _record_result(self, claim: Claim, rq_id: str, event: dict[str, Any]) -> None:
        job_id = claim.job["id"]
        key = proto.image_key(rq_id)
        png = self.redis.get(key)
        if png is None or hashlib.sha256(png).hexdigest() != event["sha256"]:
            why = "missing" if png is None else "corrupt"
            self.store.lose(claim, f"image bytes {why} in Redis", count_attempt=False)
            logger.error("job %s: image %s in Redis; dispatching again", job_id, why)
            return
        path = image_path(self.settings.output_dir, claim.job)
        write_atomic(path, png)
        result = event["result"]
        if self.store.complete(claim, str(path), result):
            self._emit(
                JobEvent(job_id, "succeeded", float(result.get("total_s") or 0.0), str(path))
            )
        elif self.store.get_job(job_id)["status"] != "succeeded":
            path.unlink(missing_ok=True)
        self.redis.delete(key)

    def _emit(self, event: JobEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    # -- liveness ----------------------------------------------------------------------------

    def _unaccounted(self) -> set[str]:
        """Dispatches neither waiting in a queue nor heartbeating, right now. Taken before
        events are drained: a worker pushes its last event and drops its heartbeat together."""
        from rq.intermediate_queue import IntermediateQueue

        if not self.in_flight:
            return set()
        ids = list(self.in_flight)
        queues = {proto.queue_for(c.job["model"]) for c in self.in_flight.values()}
        with self.redis.pipeline(transaction=False) as p:
            for rq_id in ids:
                p.exists(proto.heartbeat_key(rq_id))
            for name in queues:
                key = f"rq:queue:{name}"
                p.lrange(key, 0, -1)
                p.lrange(IntermediateQueue.get_intermediate_queue_key(key), 0, -1)
            replies = p.execute()
        beating = {rq_id for rq_id, alive in zip(ids, replies[: len(ids)], strict=True) if alive}
        waiting = {x.decode() for lst in replies[len(ids) :] for x in lst}
        return set(ids) - beating - waiting

    def _resolve(self, unaccounted: set[str]) -> None:
        now = time.monotonic()
        for rq_id in list(self._missing_since):
            if rq_id not in unaccounted or rq_id not in self.in_flight:
                del self._missing_since[rq_id]
        # Jobs cancelled (or otherwise taken back) in SQLite: stop their workers, forget them.
        holders = self.store.holders([c.job["id"] for c in self.in_flight.values()])
        for rq_id, held in list(self.in_flight.items()):
            if holders.get(held.job["id"]) != held.lease_owner:
                self._forget(rq_id, "no longer held in the database (cancelled?)")
        for rq_id in unaccounted:
            claim = self.in_flight.get(rq_id)
            if claim is None:
                continue
            since = self._missing_since.setdefault(rq_id, now)
            if now - since < self.settings.lost_after:
                continue
            started = rq_id in self.started
            why = (
                "worker stopped heartbeating"
                if started
                else "Redis lost the job before a worker took it"
            )
            status = self.store.lose(claim, f"lost: {why}", count_attempt=started)
            logger.warning(
                "job %s lost (%s); now %s",
                claim.job["id"],
                why,
                status,
                extra={"action": "job_lost"},
            )
            self._forget(rq_id, why)
            self._emit(JobEvent(claim.job["id"], "lost", 0.0, error=why))

    def _forget(self, rq_id: str, why: str) -> None:
        """Drop a dispatch: its RQ job goes, and a worker still running it is told to stop."""
        claim = self.in_flight.pop(rq_id, None)
        self._missing_since.pop(rq_id, None)
        self.started.discard(rq_id)
        with self.redis.pipeline(transaction=False) as p:
            p.set(proto.cancel_key(rq_id), why, ex=24 * 3600)
            if claim is not None:
                p.lrem(f"rq:queue:{proto.queue_for(claim.job['model'])}", 0, rq_id)
            p.delete(f"rq:job:{rq_id}")
            p.execute()

    def _finished_batches(self) -> None:
        """Run the completion hooks for batches that have just run out of work."""
        if not self.hooks:
            return
        active = self.store.active_batches()
        for batch_id in sorted(self._active_batches - active):
            self.hooks.batch_done(batch_summary(self.store, batch_id))
        self._active_batches = active

    def _sync_workers(self) -> None:
        """Copy the workers' status hashes into the workers table."""
        rows = []
        for key in self.redis.scan_iter(match=proto.WORKER_KEY + "*", count=500):
            h = {k.decode(): v.decode() for k, v in self.redis.hgetall(key).items()}
            if not h.get("name"):
                continue
            rows.append(
                {
                    "name": h["name"],
                    "transport": "rq",
                    "host": h.get("host", ""),
                    "pid": int(h["pid"]) if h.get("pid") else None,
                    "backend": h.get("backend") or None,
                    "device": h.get("device") or None,
                    "model": h.get("model") or None,
                    "state": h.get("state", "idle"),
                    "current_job": int(h["current_job"]) if h.get("current_job") else None,
                    "jobs_done": int(h.get("jobs_done") or 0),
                    "jobs_failed": int(h.get("jobs_failed") or 0),
                    "busy_s": float(h.get("busy_s") or 0.0),
                    "started_at": float(h.get("started_at") or time.time()),
                    "last_seen": float(h.get("last_seen") or time.time()),
                }
            )
        self.live_workers = sum(1 for r in rows if r["state"] != "stopped")
        self.store.upsert_workers(rows)
