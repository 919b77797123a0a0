"""How an RQ worker shows it is alive while its main thread is busy elsewhere: a thread per
job keeps RQ's heartbeats and our liveness key (a non-forking RQ worker sends none during a
job), and one keeps the status hash fresh while a model loads at start."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from redis import exceptions as rx

from contract import protocol as proto

if TYPE_CHECKING:
    from rq.job import Job

    from workers.rq.worker import OrchestrateWorker

logger = logging.getLogger(__name__)

REDIS_ERRORS = (rx.ConnectionError, rx.TimeoutError)  # Redis away: the beats resume when back


class Announcer(threading.Thread):
    """While the main thread is away from the work loop (loading a model at start), publish
    the worker's state every heartbeat, so it is not taken for dead."""

    def __init__(self, worker: OrchestrateWorker, state: str) -> None:
        super().__init__(name=f"announce-{state}", daemon=True)
        self.worker = worker
        self.state = state
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            self.worker.publish_quietly(self.state)
            if self._done.wait(self.worker.heartbeat_interval):
                return

    def __enter__(self) -> Announcer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self.join()


class JobHeartbeat(threading.Thread):
    """During a job: RQ's worker and job heartbeats, and our liveness key. A Redis outage
    is logged by the worker; the beats resume when it is back."""

    def __init__(self, worker: OrchestrateWorker, job: Job, execution: Any) -> None:
        super().__init__(name=f"heartbeat-{job.id}", daemon=True)
        self.worker = worker
        self.job = job
        self.execution = execution
        self._done = threading.Event()
        with contextlib.suppress(*REDIS_ERRORS):
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
            except REDIS_ERRORS as exc:
                self.worker._redis_down(exc, self.worker.heartbeat_interval)
            except Exception as exc:
                logger.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self._done.set()
        self.join()
