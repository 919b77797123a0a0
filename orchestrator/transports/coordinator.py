"""The coordinator: SQLite stays the source of truth while RQ workers on other machines do the work.

It moves jobs from ``pending`` to ``queued`` into per-model RQ queues, a bounded window at a
time (about two per live worker), so priority, cancel, retry and pause keep acting on SQLite.
Jobs of a paused batch (any job, while the queue is paused) are not dispatched, and those
dispatched but not yet taken by a worker are taken back to pending. Workers
push events to one Redis list; the coordinator moves each to a processing list, acts on it,
then removes it, so an event whose handling was cut short (a crash, a Redis or SQLite error)
is handled again; handling is idempotent, because every event is matched against the job's
lease owner in SQLite, never against memory.

The coordinator keeps no truth of its own between ticks. What is in flight is read from
SQLite (jobs queued or running under a dispatch's owner) and checked against Redis (queues,
heartbeat keys) on every reconcile; a dispatch unaccounted for ``lost_after`` seconds (worker
killed, Redis restarted or flushed) is put back to pending and dispatched again, and one that
never started does not use up an attempt. Any Redis or SQLite error leaves every job
recoverable by the next tick of the same process.

Exactly one coordinator runs per database: it holds a lease row in SQLite, renewed every
tick; a second one refuses to start, naming the holder, and takes over once the holder's
lease has expired. Every write this coordinator makes goes through a view of the store fenced
by that lease (``JobStore.fenced``): the check and the write are one transaction, so a
coordinator taken over while it was stopped or slow changes no row when it wakes, and stops
(CoordinatorConflict). Steps outside SQLite that could disturb its successor (staging a file,
withdrawing a dispatch from Redis) check the lease just before; the one step that may still
follow a takeover is finishing the publish of a result committed under the lease, the same
rename of the same bytes that the successor's recovery makes. Completion hooks run in a
thread of their own (``HookRunner``), never inside a tick, so a slow hook never lets the lease
lapse.

Results go through ``orchestrator.results``; an image is streamed from Redis to its staged
file, never read whole, and refused above ``max_image_bytes``. Malformed, foreign or forged
events are dead-lettered and counted, never fatal. A full or
unwritable output folder pauses the coordinator (the event stays to be handled again); a job
whose own folder cannot be written stays succeeded with its image staged, tried again with
backoff.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import faults
from contract import protocol as proto
from contract.errors import CoordinatorConflict, PublishBlocked, TransientError
from contract.limits import BATCH_SIZE
from contract.status import WORKER_STATES, JobStatus
from orchestrator.events import JobEvent
from orchestrator.hooks import HookRunner, Hooks, batch_summary
from orchestrator.results import STAGING, ImageMismatch, Results
from orchestrator.status import presence
from orchestrator.store import Claim, JobStore, backoff_seconds

logger = logging.getLogger(__name__)

IMAGE_CHUNK = 1 << 20  # bytes per GETRANGE when streaming an image out of Redis


@dataclass(frozen=True)
class CoordinatorSettings:
    output_dir: Path
    window: int | None = None  # jobs in Redis; None: per_worker x the live workers' batch sizes
    per_worker: int = 2
    min_window: int = 2
    lost_after: float = 5.0
    reconcile_every: float = 1.0
    withdraw_every: float = 5.0  # look for running jobs nobody holds any more (cancelled)
    workers_every: float = 2.0
    housekeeping_every: float = 30.0
    poll: float = 0.2
    job_timeout: int = 3600
    result_ttl: int = 3600
    until_done: bool = False
    batch_events: int = 200
    lease_ttl: float = 15.0  # the coordinator's own lease on the database
    max_image_bytes: int = 128 * 2**20
    pause_seconds: float = 5.0
    secret: bytes | None = None


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
        self.host = socket.gethostname()
        self.holder = f"{self.host}:{os.getpid()}/{secrets.token_hex(4)}"
        # The lease itself is taken, renewed and given up through the plain store; everything
        # else this coordinator writes, through the view its lease fences.
        self.lease_store = store
        self.store = store.fenced(store.make_coordinator_fence(self.holder))
        self.redis = redis
        self.settings = settings
        self.results = Results(self.store, settings.output_dir)
        self.on_event = on_event
        self.hooks = hooks or Hooks()
        self._hook_runner = HookRunner(self.hooks)
        self.live_workers = 0
        # What the live workers run at once: the sum of their batch sizes (1 each by default).
        self.live_capacity = 0
        self.processed = 0
        self.dead_letters = 0
        # Soft state only, rebuilt harmlessly: when each dispatch was first seen unaccounted
        # (a restart only delays a verdict), and what was already said in the log.
        self._missing_since: dict[str, float] = {}
        self._paused: str | None = None
        self._bad_workers: set[str] = set()
        self._active_batches: set[int] = set()
        self._stop = threading.Event()
        self._next: dict[str, float] = {}
        self._acquired = False
        self._recovered = False  # the first recovery tries every unpublished image

    def request_stop(self) -> None:
        """Stop after this tick; asked again, stop waiting for completion hooks too."""
        if self._stop.is_set():
            self._hook_runner.cancel()
        self._stop.set()

    # -- the lease on the database -------------------------------------------------------------

    def acquire(self) -> None:
        """Become this database's coordinator, or raise CoordinatorConflict naming the one
        that is."""
        other = self.lease_store.acquire_coordinator(
            self.holder, host=self.host, pid=os.getpid(), ttl=self.settings.lease_ttl
        )
        if other is not None:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other["since"]))
            left = max(0.0, other["expires_at"] - time.time())
            raise CoordinatorConflict(
                f"another coordinator runs on this database: pid {other['pid']} on "
                f"{other['host']}, since {since} (lease renewed {time.time() - other['renewed_at']:.0f}s "
                f"ago); stop it first, or, if it died, start again in {left:.0f}s"
            )
        self._active_batches = self.store.list_active_batches()
        self._acquired = True
        logger.info("coordinator %s holds the database", self.holder)

    def held(self) -> set[str]:
        """RQ job ids of the dispatches that hold a job now (from SQLite, without payloads)."""
        return {
            proto.split_owner(owner)[0]
            for owner in self.store.list_held_owners(proto.DISPATCH_PREFIX)
        }

    def in_flight(self) -> dict[str, tuple[Claim, str]]:
        """Dispatches that hold a job now, by RQ job id, with the job's status: from SQLite."""
        return {
            proto.split_owner(claim.lease_owner)[0]: (claim, status)
            for claim, status in self.store.list_in_flight(proto.DISPATCH_PREFIX)
        }

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped, or (``until_done``) until no job is pending, queued or running.
        Returns 0, or 1 when any job failed (``until_done``)."""
        import redis

        s = self.settings
        if not self._acquired:
            self.acquire()
        failed = 0  # ticks in a row that Redis failed
        try:
            while not self._stop.is_set():
                try:
                    busy = self.tick()
                    self._resume()
                    failed = 0
                except redis.exceptions.RedisError as exc:
                    self._pause(f"Redis: {exc}")
                    self._stop.wait(proto.REDIS_BACKOFF.delay(failed))
                    failed += 1
                    continue
                except TransientError as exc:
                    self._pause(str(exc))
                    self._stop.wait(s.pause_seconds)
                    continue
                if s.until_done and self._all_done():
                    break
                if not busy:
                    self._stop.wait(s.poll)  # nothing out there: look for new work shortly
        finally:
            self._shutdown()
        if not s.until_done:
            return 0
        waiting = self.store.read_pauses()["waiting"] if self.store.has_active() else 0
        if waiting:
            logger.warning(
                "stopping with %d jobs paused: `orchestrate resume` them, then start the "
                "coordinator again",
                waiting,
                extra={"action": "paused_left"},
            )
        blocked = self.store.summarize_unpublished()["blocked"]
        if blocked:
            logger.warning(
                "stopping with %d succeeded jobs' images not in place (the folder cannot be "
                "written; `orchestrate status` says why): they wait in %s, and the next start "
                "or `orchestrate verify --repair` publishes them",
                blocked,
                s.output_dir / STAGING,
                extra={"action": "unpublished_left"},
            )
        return 1 if waiting or blocked or self.store.count_jobs()[JobStatus.FAILED] else 0

    def _due(self, what: str, every: float) -> bool:
        now = time.monotonic()
        if now < self._next.get(what, 0.0):
            return False
        self._next[what] = now + every
        return True

    def tick(self) -> bool:
        """One round: renew the lease, drain events, reconcile with Redis, dispatch. Returns
        whether anything is in flight (then events are awaited by blocking on Redis)."""
        s = self.settings
        if self._due("lease", s.lease_ttl / 3) and not self.lease_store.renew_coordinator(
            self.holder,
            ttl=s.lease_ttl,
            state="paused" if self._paused else "running",
            message=self._paused,
        ):
            raise CoordinatorConflict(f"coordinator {self.holder} lost its lease; stopping")
        if self._due("housekeeping", s.housekeeping_every):
            self.store.recover_submits()
            self.results.recover(backoff=self._recovered)
            self._recovered = True
            self.results.sweep()
        if self._due("workers", s.workers_every):
            self._sync_workers()
            self._finished_batches()
        held = self.held()
        snapshot = self._redis_view(held) if self._due("reconcile", s.reconcile_every) else None
        self._drain_events(block=bool(held) and not self._paused)
        held = self.held()  # what the events changed
        if snapshot is not None:
            held = self._reconcile(snapshot, held)
        if self._due("withdraw", s.withdraw_every):
            self._withdraw_unwanted(held)
        if self._due("paused", s.reconcile_every):
            held -= self._take_back_paused()
        dispatched = 0 if self._paused else self._dispatch(len(held))
        return bool(held) or dispatched > 0

    def _all_done(self) -> bool:
        # Pending jobs of paused batches do not count: nobody takes them until resumed
        # (run() says how many are left when it stops).
        return (
            not self.held()
            and not self.store.has_workable()
            and not self.redis.llen(proto.EVENTS_KEY)
            and not self.redis.llen(proto.PROCESSING_KEY)
            and self.results.recover() == 0
        )

    def _pause(self, why: str) -> None:
        if self._paused != why:
            logger.error("paused: %s (retrying)", why)
            self._paused = why

    def _resume(self) -> None:
        if self._paused is not None:
            logger.warning("resumed (was: %s)", self._paused)
            self._paused = None

    def _shutdown(self) -> None:
        try:
            self.store.check_fence()  # taken over: everything is the successor's now
            self._finished_batches()
            self._sync_workers()
            # What a killed process staged or committed during this run is not left waiting.
            self.results.recover(backoff=False)
            self.results.sweep()
        except CoordinatorConflict:
            logger.info(
                "taken over: leaving the database to the new coordinator",
                extra={"action": "lease_lost"},
            )
        except Exception as exc:  # Redis or SQLite gone at the very end: tables keep their view
            logger.warning("could not finish up at exit: %s", exc)
        try:
            self.lease_store.release_coordinator(self.holder)
        except Exception as exc:
            logger.warning("could not release the coordinator lease: %s", exc)
        # After the lease is given up: a slow hook delays this exit, never a successor.
        self._hook_runner.close()

    # -- dispatch ----------------------------------------------------------------------------

    def window(self) -> int:
        s = self.settings
        if s.window is not None:
            return s.window
        return max(s.min_window, s.per_worker * self.live_capacity)

    def _dispatch(self, in_flight: int | None = None) -> int:
        from rq import Queue
        from rq.serializers import JSONSerializer

        need = self.window() - (len(self.held()) if in_flight is None else in_flight)
        if need <= 0:
            return 0

        def owner_for(job: dict[str, Any]) -> str:
            rq_id = proto.rq_id_for(job["id"], job["attempt"], secrets.token_hex(3))
            return proto.lease_owner(rq_id, secrets.token_hex(16))

        claims = self.store.dispatch(need, owner_for)
        if not claims:
            return 0
        by_queue: dict[str, list[Any]] = {}
        for claim in claims:
            rq_id, token = proto.split_owner(claim.lease_owner)
            payload = proto.sign({**claim.job, "token": token}, self.settings.secret)
            by_queue.setdefault(proto.queue_for(claim.job["model"]), []).append(
                Queue.prepare_data(
                    proto.TASK,
                    args=(payload,),
                    job_id=rq_id,
                    timeout=self.settings.job_timeout,
                    result_ttl=self.settings.result_ttl,
                    failure_ttl=7 * 24 * 3600,
                    description=f"job {claim.job['id']}: {claim.job['prompt'][:60]}",
                )
            )
        # SQLite said `queued` first. If the enqueue fails, give the jobs back at once (they
        # did not start, so no attempt is used up); if it went through after all, the
        # reconcile withdraws what nobody holds.
        try:
            faults.point("coordinator.before_enqueue")
            with self.redis.pipeline() as p:
                for name, datas in by_queue.items():
                    Queue(name, connection=self.redis, serializer=JSONSerializer).enqueue_many(
                        datas, pipeline=p
                    )
                    p.sadd(proto.QUEUES_KEY, name)
                p.execute()
        except BaseException:
            for claim in claims:
                try:
                    self.store.lose(claim, "could not enqueue in Redis", count_attempt=False)
                except Exception as exc:  # the reconcile finds it unaccounted instead
                    logger.warning("job %s: %s", claim.job["id"], exc)
            raise
        logger.debug("dispatched %d jobs", len(claims), extra={"action": "dispatched"})
        return len(claims)

    # -- events ------------------------------------------------------------------------------

    def _take(self, block: bool) -> list[bytes]:
        """Events to handle: what is in the processing list (taken before but not finished,
        by this process or a dead one) first, then new ones moved there from the events list."""
        cap = self.settings.batch_events
        with self.redis.pipeline(transaction=False) as p:
            p.lrange(proto.PROCESSING_KEY, 0, cap - 1)
            p.llen(proto.EVENTS_KEY)
            taken, waiting = p.execute()
        raws = list(taken)
        more = min(cap - len(raws), int(waiting))
        if more > 0:
            with self.redis.pipeline(transaction=False) as p:
                for _ in range(more):
                    p.lmove(proto.EVENTS_KEY, proto.PROCESSING_KEY, "LEFT", "RIGHT")
                raws.extend(e for e in p.execute() if e is not None)
        if not raws and block:
            first = self.redis.blmove(
                proto.EVENTS_KEY, proto.PROCESSING_KEY, self.settings.poll, "LEFT", "RIGHT"
            )
            if first is not None:
                raws.append(first)
        return raws

    def _drain_events(self, block: bool) -> None:
        raws = self._take(block)
        done: list[bytes] = []
        try:
            for raw in raws:
                self._handle_raw(raw)
                done.append(raw)
                faults.point("coordinator.event_handled")
        finally:
            # Only what was handled leaves the processing list; the rest is tried again.
            if done:
                with self.redis.pipeline(transaction=False) as p:
                    for raw in done:
                        p.lrem(proto.PROCESSING_KEY, 1, raw)
                    p.execute()
                self.processed += len(done)

    def _handle_raw(self, raw: bytes) -> None:
        try:
            event = proto.decode_event(raw, self.settings.secret)
        except proto.BadMessage as exc:
            self._dead_letter(raw, str(exc))
            return
        if event.type == "refused":
            reason = f"worker {event.worker} refused RQ job {event.rq_id}: {event.error}"
            self._dead_letter(raw, reason, source="worker")
            self._refused(event.rq_id, reason)
            return
        found = self.store.find_claim(event.job_id, event.owner)
        if found is None:
            self._unheld(event, raw)
            return
        claim, status = found
        handler = {
            "started": self._on_started,
            "result": self._on_result,
            "failed": self._on_failed,
            "released": self._on_released,
        }[event.type]
        handler(claim, status, event)

    def _refused(self, rq_id: str, reason: str) -> None:
        """A dispatch of ours that a worker refused (a payload it cannot check: an older
        worker, a job past its limits) counts as a failed attempt, so the job ends failed
        after its attempts rather than going round the reconcile for ever."""
        if not rq_id:
            return
        for claim, _status in self.store.list_in_flight(f"{proto.DISPATCH_PREFIX}{rq_id}/"):
            if proto.split_owner(claim.lease_owner)[0] == rq_id:
                self.store.fail(claim, reason)
                logger.warning(
                    "job %s: %s", claim.job["id"], reason, extra={"action": "job_refused"}
                )

    def _unheld(self, event: proto.Event, raw: bytes) -> None:
        """An event for a dispatch that does not hold its job: late or repeated (dropped), or
        naming the current dispatch with the wrong token (forged: dead-lettered)."""
        holder = self.store.read_holders([event.job_id]).get(event.job_id)
        if holder is not None and proto.split_owner(holder)[0] == event.rq_id:
            self._dead_letter(raw, f"wrong token for dispatch {event.rq_id}")
            return
        if event.type == "result":
            self.redis.delete(proto.image_key(event.rq_id))
            logger.info("late result %s dropped", event.rq_id, extra={"action": "late_result"})

    def _dead_letter(self, raw: bytes, reason: str, source: str = "event") -> None:
        excerpt = raw[:300].decode("utf-8", "replace")
        logger.error("dead letter (%s): %s", reason, excerpt[:120])
        self.store.add_dead_letters([(source, reason, excerpt)])
        with self.redis.pipeline(transaction=False) as p:
            p.rpush(proto.DEAD_KEY, raw[:10_000])
            p.ltrim(proto.DEAD_KEY, -proto.DEAD_KEPT, -1)
            p.execute()
        self.dead_letters += 1

    def _on_started(self, claim: Claim, status: str, event: proto.Event) -> None:
        self.store.mark_started(claim, worker=event.worker, host=event.host, pid=event.pid)

    def _on_failed(self, claim: Claim, status: str, event: proto.Event) -> None:
        error = event.error or "(no error text)"
        new = self.store.fail(claim, error, retryable=event.retryable, scores=event.scores)
        logger.warning("job %s failed on %s: %s", claim.job_id, event.worker, error)
        self._missing_since.pop(event.rq_id, None)
        retry_in = backoff_seconds(claim.job["attempt"]) if new == JobStatus.PENDING else None
        self._emit(
            JobEvent(
                claim.job_id,
                JobStatus.FAILED if new == JobStatus.FAILED else "retrying",
                self._ran_for(claim),
                error=error,
                retry_in=retry_in,
            )
        )

    def _on_released(self, claim: Claim, status: str, event: proto.Event) -> None:
        self.store.release(claim, f"worker {event.worker} shut down")
        self._missing_since.pop(event.rq_id, None)
        self._emit(JobEvent(claim.job_id, "released", self._ran_for(claim)))

    def _on_result(self, claim: Claim, status: str, event: proto.Event) -> None:
        job_id = claim.job_id
        key = proto.image_key(event.rq_id)
        size = int(self.redis.strlen(key))
        limit = self.settings.max_image_bytes
        if size > limit or (event.size or 0) > limit:
            self.store.fail(
                claim,
                f"image of {max(size, event.size or 0)} bytes is over the limit of {limit} "
                "(--max-image-mb)",
                retryable=False,
            )
            self.redis.delete(key)
            self._emit(
                JobEvent(
                    job_id,
                    JobStatus.FAILED,
                    self._ran_for(claim),
                    error="image over the size limit",
                )
            )
            return
        if size == 0 or size != event.size:
            # Counted: a worker that keeps sending bad images must not loop for ever.
            why = "missing" if size == 0 else f"of {size} bytes, not the {event.size} announced"
            self.store.lose(claim, f"image {why} in Redis", count_attempt=True)
            logger.error("job %s: image %s in Redis; dispatching again", job_id, why)
            return
        delivery = self.results.delivery(
            claim, self._stream(key, size), event.result, expect_sha256=event.sha256
        )
        # No file is staged once taken over: the successor handles this same event.
        self.store.check_fence()
        try:
            published = delivery.advance()
        except ImageMismatch as exc:
            self.store.lose(claim, f"image corrupt in Redis: {exc}", count_attempt=True)
            logger.error("job %s: image corrupt in Redis; dispatching again", job_id)
            self.redis.delete(key)
            return
        except PublishBlocked as exc:
            # Succeeded, its bytes staged: only its own folder is in the way (recorded).
            self.redis.delete(key)
            self._missing_since.pop(event.rq_id, None)
            self._emit(JobEvent(job_id, "unpublished", 0.0, str(delivery.final), error=str(exc)))
            return
        self.redis.delete(key)
        self._missing_since.pop(event.rq_id, None)
        if published:
            total = float(event.result.get("total_s") or 0.0)
            self._emit(JobEvent(job_id, JobStatus.SUCCEEDED, total, str(delivery.final)))
        else:
            logger.info("job %s result dropped", job_id, extra={"action": "late_result"})

    def _stream(self, key: str, size: int) -> Iterator[bytes]:
        for start in range(0, size, IMAGE_CHUNK):
            yield self.redis.getrange(key, start, min(size, start + IMAGE_CHUNK) - 1)

    def _ran_for(self, claim: Claim) -> float:
        """Seconds the claim's attempt ran, by its row (this host's clock), for the log line."""
        return self.store.read_attempt_seconds(claim.attempt_id) or 0.0

    def _emit(self, event: JobEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    # -- liveness ----------------------------------------------------------------------------

    def _redis_view(self, held_now: set[str] | None = None) -> tuple[set[str], set[str]]:
        """(dispatches heartbeating, dispatches waiting in a queue) right now. Taken before
        events are drained: a worker pushes its last event and drops its heartbeat together.

        A dispatch in RQ's intermediate queue (taken by a worker, not yet started) counts as
        waiting only once it heartbeats: a worker that died, or lost Redis, between taking a
        job and starting it would otherwise leave it there for ever. The worker beats at
        once, so the ``lost_after`` grace covers the moment in between."""
        held = sorted(self.held() if held_now is None else held_now)
        queues = [q.decode() for q in self.redis.smembers(proto.QUEUES_KEY)]
        with self.redis.pipeline(transaction=False) as p:
            for rq_id in held:
                p.exists(proto.heartbeat_key(rq_id))
            for name in queues:
                p.lrange(f"rq:queue:{name}", 0, -1)
            replies = p.execute()
        beating = {rq_id for rq_id, alive in zip(held, replies[: len(held)], strict=True) if alive}
        waiting = {x.decode() for lst in replies[len(held) :] for x in lst}
        return beating, waiting

    def _reconcile(
        self, view: tuple[set[str], set[str]], held_now: set[str] | None = None
    ) -> set[str]:
        """Withdraw what Redis holds that SQLite does not; put back what SQLite holds that
        Redis lost track of for ``lost_after``. Returns the dispatches still held."""
        beating, waiting = view
        held = self.held() if held_now is None else set(held_now)
        # Queued in Redis but held by nobody (cancelled, or given back after a failed
        # enqueue that went through after all): withdraw.
        for rq_id in waiting - held:
            self._withdraw(rq_id, "not held in the database (cancelled?)")
        if self.redis.llen(proto.EVENTS_KEY) or self.redis.llen(proto.PROCESSING_KEY):
            return held  # events not handled yet may account for some: judge next time
        unaccounted = held - beating - waiting
        now = time.monotonic()
        for rq_id in list(self._missing_since):
            if rq_id not in unaccounted:
                del self._missing_since[rq_id]
        overdue = [
            rq_id
            for rq_id in sorted(unaccounted)
            if now - self._missing_since.setdefault(rq_id, now) >= self.settings.lost_after
        ]
        claims = self.in_flight() if overdue else {}
        for rq_id in overdue:
            if rq_id not in claims:
                continue  # finished meanwhile
            claim, status = claims[rq_id]
            started = status == JobStatus.RUNNING
            why = (
                "worker stopped heartbeating"
                if started
                else "Redis lost the job before a worker took it"
            )
            new = self.store.lose(claim, f"lost: {why}", count_attempt=started)
            del self._missing_since[rq_id]
            if new is None:
                continue  # finished meanwhile
            logger.warning(
                "job %s lost (%s); now %s", claim.job_id, why, new, extra={"action": "job_lost"}
            )
            self._withdraw(rq_id, why, model=claim.job["model"])
            self._emit(JobEvent(claim.job_id, "lost", self._ran_for(claim), error=why))
            held.discard(rq_id)
        return held

    def _withdraw_unwanted(self, held_now: set[str] | None = None) -> None:
        """Workers running a dispatch that no longer holds its job (cancelled, or lost and
        dispatched again) are told to stop."""
        held = self.held() if held_now is None else held_now
        prefix = proto.heartbeat_key("")
        for key in self.redis.scan_iter(match=proto.HEARTBEAT_PATTERN, count=1000):
            rq_id = key.decode()[len(prefix) :]
            if rq_id not in held:
                self._withdraw(rq_id, "not held in the database (cancelled?)")

    def _withdraw(self, rq_id: str, why: str, model: str | None = None) -> None:
        """Drop a dispatch from Redis: its RQ job goes, and a worker running it is told to stop.
        Only while this coordinator holds its lease: a successor's dispatch is not ours to judge."""
        self.store.check_fence()
        queues = (
            [proto.queue_for(model)]
            if model is not None
            else [q.decode() for q in self.redis.smembers(proto.QUEUES_KEY)]
        )
        from rq.intermediate_queue import IntermediateQueue

        with self.redis.pipeline(transaction=False) as p:
            p.set(proto.cancel_key(rq_id), why, ex=24 * 3600)
            for name in queues:
                key = f"rq:queue:{name}"
                p.lrem(key, 0, rq_id)
                p.lrem(IntermediateQueue.get_intermediate_queue_key(key), 0, rq_id)
            p.delete(f"rq:job:{rq_id}", proto.heartbeat_key(rq_id))
            p.execute()

    def _take_back_paused(self) -> set[str]:
        """Dispatches of paused batches (of every batch, while the queue is paused) that no
        worker has taken yet go back to pending, without using up an attempt; those a worker
        has taken run to the end. The RQ job is removed from its queue first: LREM taking it
        out means no worker can have it. A crash after that and before SQLite gives the job
        back leaves a dispatch in no queue, which the reconcile puts back after ``lost_after``.
        Returns the RQ ids taken back."""
        taken: set[str] = set()
        for claim in self.store.list_paused_dispatches(proto.DISPATCH_PREFIX):
            rq_id = proto.split_owner(claim.lease_owner)[0]
            queue = f"rq:queue:{proto.queue_for(claim.job['model'])}"
            self.store.check_fence()
            if not self.redis.lrem(queue, 0, rq_id):
                continue  # a worker has it (or it is gone, which the reconcile handles)
            self.store.release(claim, "taken back from Redis: paused")
            self.redis.delete(f"rq:job:{rq_id}")
            self._missing_since.pop(rq_id, None)
            taken.add(rq_id)
        if taken:
            logger.info(
                "took %d paused jobs back from Redis", len(taken), extra={"action": "paused"}
            )
        return taken

    def _finished_batches(self) -> None:
        """Queue the completion hooks of batches that have just run out of work (they run in
        the hook runner's thread, never in the tick)."""
        if not self.hooks:
            return
        active = self.store.list_active_batches()
        for batch_id in sorted(self._active_batches - active):
            self._hook_runner.submit(batch_summary(self.store, batch_id))
        self._active_batches = active

    def _sync_workers(self) -> None:
        """Copy the workers' status hashes into the workers table; a field that is not what
        it should be is left out (and the worker named once in the dead letters)."""
        rows = []
        capacity = 0
        now = time.time()
        for key in self.redis.scan_iter(match=proto.WORKER_KEY + "*", count=500):
            with self.redis.pipeline(transaction=False) as p:
                p.hgetall(key)
                p.pttl(key)
                raw, pttl = p.execute()
            h = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}
            name = h.get("name", "")[:255]
            if not name:
                continue
            row, bad = _worker_row(h, pttl, now)
            if presence(row, now) == row["state"]:  # heard from lately, and not stopped
                capacity += _batch_size(h.get("batch_size"))
            if bad and name not in self._bad_workers:
                self._bad_workers.add(name)
                self.store.add_dead_letters(
                    [("worker", f"worker {name}: bad fields {', '.join(bad)}", repr(h)[:300])]
                )
            rows.append(row)
        self.live_workers = sum(1 for r in rows if presence(r, now) == r["state"])
        self.live_capacity = capacity
        self.store.upsert_workers(rows)


def _batch_size(value: str | None) -> int:
    """A worker's published batch size (an older worker publishes none: 1)."""
    try:
        return min(BATCH_SIZE.max, max(BATCH_SIZE.min, int(value or 1)))
    except ValueError:
        return 1


def _worker_row(
    h: dict[str, str], pttl: int | None = None, now: float | None = None
) -> tuple[dict[str, Any], list[str]]:
    """A workers-table row of a worker's status hash, and the names of its bad fields.

    ``last_seen`` is when the worker last published, measured by Redis rather than read from
    the worker's clock (which may be off): the hash is given ``ttl_s`` seconds to live at each
    publish, so ``ttl_s`` less what remains (``pttl``, in ms) is how long ago that was."""
    bad: list[str] = []

    def num(name: str, kind: type, default: Any) -> Any:
        value = h.get(name)
        if value in (None, ""):
            return default
        try:
            out = kind(value)
        except ValueError:
            bad.append(name)
            return default
        if kind is float and not math.isfinite(out):
            bad.append(name)
            return default
        return out

    now = time.time() if now is None else now
    state = h.get("state", "idle")
    if state not in WORKER_STATES:
        bad.append("state")
        state = "idle"
    last_seen = num("last_seen", float, now)
    ttl_s = num("ttl_s", float, None)
    if ttl_s is not None and pttl is not None and pttl > 0:
        last_seen = now - min(max(0.0, ttl_s - pttl / 1000), ttl_s)
    heartbeat_s = num("heartbeat_s", float, None)
    row = {
        "name": h["name"][:255],
        "transport": "rq",
        "host": h.get("host", "")[:255],
        "pid": num("pid", int, None),
        "backend": (h.get("backend") or None),
        "device": (h.get("device") or None),
        "model": (h.get("model") or None),
        "state": state,
        "message": (h.get("message") or None),
        "current_job": num("current_job", int, None),
        "jobs_done": num("jobs_done", int, 0),
        "jobs_failed": num("jobs_failed", int, 0),
        "busy_s": num("busy_s", float, 0.0),
        "started_at": num("started_at", float, now),
        "last_seen": last_seen,
        "heartbeat_s": None if heartbeat_s is None else min(max(heartbeat_s, 0.1), 3600.0),
    }
    return row, bad
