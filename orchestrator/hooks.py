"""Completion hooks: tell someone when a batch finishes (users leave these running overnight).

``--notify-url URL`` POSTs a JSON summary; ``--on-done CMD`` runs a shell command with the
summary as JSON on stdin and in ``ORCHESTRATE_*`` environment variables. A failing hook is
logged, never fatal: the images are already safe. Each hook gets ``TIMEOUT_S`` seconds.

A long-running process (the coordinator) hands summaries to a ``HookRunner``, which runs the
hooks in a thread of its own: a slow hook never delays the loop that renews its lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from contract.status import JobStatus

logger = logging.getLogger(__name__)
TIMEOUT_S = 30  # per hook (the URL, the command)
QUEUE_SIZE = 32  # batch summaries waiting for their hooks; one more is dropped, and logged
CLOSE_WAIT_S = TIMEOUT_S  # how long a stopping process runs the hooks still queued


@dataclass(frozen=True)
class Hooks:
    notify_url: str | None = None
    on_done: str | None = None

    def __bool__(self) -> bool:
        return bool(self.notify_url or self.on_done)

    def batch_done(self, summary: dict[str, Any], stop: threading.Event | None = None) -> None:
        """Run both hooks for one finished batch; ``stop`` set ends a running command early."""
        body = json.dumps(summary, sort_keys=True).encode()
        if self.notify_url:
            try:
                req = urllib.request.Request(
                    self.notify_url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                    resp.read()
            except Exception as exc:
                logger.warning("--notify-url %s failed: %s", self.notify_url, exc)
        if self.on_done:
            env = {
                **os.environ,
                "ORCHESTRATE_BATCH_ID": str(summary.get("batch_id", "")),
                "ORCHESTRATE_SUCCEEDED": str(summary["counts"].get(JobStatus.SUCCEEDED, 0)),
                "ORCHESTRATE_FAILED": str(summary["counts"].get(JobStatus.FAILED, 0)),
                "ORCHESTRATE_TOTAL": str(sum(summary["counts"].values())),
            }
            try:
                code = _run_command(self.on_done, body, env, stop)
                if code is None:
                    logger.warning("--on-done did not finish in %ds: killed", TIMEOUT_S)
                elif code:
                    logger.warning("--on-done exited %d", code)
            except Exception as exc:
                logger.warning("--on-done failed: %s", exc)


def _run_command(
    command: str, body: bytes, env: dict[str, str], stop: threading.Event | None
) -> int | None:
    """Run a shell command with ``body`` on stdin; its exit status, or None when it ran past
    ``TIMEOUT_S`` (or ``stop`` was set) and was killed with everything it started."""
    # Its own process group, so a timeout kills what the shell started too.
    proc = subprocess.Popen(
        command, shell=True, stdin=subprocess.PIPE, env=env, start_new_session=True
    )
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # a command that does not read its input
        proc.stdin.write(body)  # a summary is far smaller than a pipe's buffer
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        try:
            return proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return None


class HookRunner:
    """Runs completion hooks in one background thread, in order, so a slow hook never holds
    up the caller (the coordinator's tick, which renews its lease).

    At most ``size`` summaries wait; when the queue is full a new one is dropped with a
    warning naming its batch (its images are safe; only that notification is lost).
    ``close`` runs what is still queued for at most ``wait`` seconds, then kills a command
    still running and names the batches left unannounced; ``cancel`` stops waiting at once."""

    def __init__(self, hooks: Hooks, *, size: int = QUEUE_SIZE) -> None:
        self.hooks = hooks
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(size)
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._abandon = threading.Event()
        self._running: dict[str, Any] | None = None
        self.dropped = 0

    def submit(self, summary: dict[str, Any]) -> bool:
        """Queue one finished batch's hooks; False when there are none, the queue is full, or
        the runner is closing."""
        if not self.hooks or self._closing.is_set():
            return False
        try:
            self._queue.put_nowait(summary)
        except queue.Full:
            self.dropped += 1
            logger.warning(
                "completion hooks are %d batches behind: batch %s's hooks are skipped",
                self._queue.maxsize,
                summary.get("batch_id"),
                extra={"action": "hook_dropped", "batch_id": summary.get("batch_id")},
            )
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="completion-hooks", daemon=True)
            self._thread.start()
        return True

    def _work(self) -> None:
        while not self._abandon.is_set():
            try:
                summary = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            self._running = summary
            try:
                self.hooks.batch_done(summary, stop=self._abandon)
            except Exception as exc:  # never let one batch's hooks end the others'
                logger.warning("completion hooks for batch %s: %s", summary.get("batch_id"), exc)
            finally:
                self._running = None

    def cancel(self) -> None:
        """Stop waiting for hooks: ``close`` returns at once (a second Ctrl-C)."""
        self._abandon.set()

    def close(self, wait: float = CLOSE_WAIT_S) -> None:
        """Run the hooks still queued, for at most ``wait`` seconds, then stop."""
        self._closing.set()
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive() and (self._running is not None or not self._queue.empty()):
            logger.info("running completion hooks (at most %.0fs)", wait)
        deadline = time.monotonic() + wait
        while thread.is_alive() and time.monotonic() < deadline and not self._abandon.is_set():
            thread.join(0.1)
        if not thread.is_alive():
            return
        self._abandon.set()
        left = [s.get("batch_id") for s in [self._running, *_drain(self._queue)] if s]
        thread.join(1.0)  # a command is killed at once; a URL still posting is left behind
        if left:
            logger.warning(
                "stopping without completion hooks for batches %s",
                ", ".join(map(str, left)),
                extra={"action": "hooks_left"},
            )


def _drain(q: queue.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def batch_summary(store: Any, batch_id: int) -> dict[str, Any]:
    counts = store.count_jobs(batch_id)
    name = next((b["name"] for b in store.list_batches() if b["id"] == batch_id), "")
    return {"event": "batch_done", "batch_id": batch_id, "name": name, "counts": counts}
