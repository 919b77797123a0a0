"""Working through the queue on this machine, as a library: the check that a run's models can
be loaded here, the counts a run's progress is measured against, the worker loop (stopped
gently by a signal), and how a run ended (``RunReport``). The ``run`` and ``work`` commands
(``orchestrator.cli.local``) are a few lines over it: options in, words out."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.errors import UsageError
from contract.status import JobStatus
from orchestrator.config import RunSettings, WorkerSettings
from orchestrator.events import JobEvent
from orchestrator.hooks import Hooks, batch_summary
from orchestrator.manifest import Manifest
from orchestrator.store import JobStore, SubmitResult

if TYPE_CHECKING:  # the worker's modules are loaded only by a command that works
    from orchestrator.preflight import ModelProblem
    from orchestrator.transports.local import LocalWorker, WorkerStats

Counts = Callable[[], dict[str, int]]  # a run's jobs, by status, now
Say = Callable[[str], None]  # one line for the user (the CLI: stderr)


class ModelsMissing(UsageError):
    """A run refused before it starts: some of its models cannot be loaded here (each named
    in ``problems``)."""

    def __init__(self, message: str, problems: list[ModelProblem]) -> None:
        super().__init__(message)
        self.problems = problems


def check_models_here(
    store: JobStore,
    manifest: Manifest | None,
    *,
    device: str,
    backend: str,
    low_memory: bool = False,
) -> list[str]:
    """Refuse to start a run whose models this machine cannot load: every distinct model of
    the manifest (before it is submitted) and of the jobs already waiting, which a run works
    through too, with job counts, their batches and the way out (``ModelsMissing``). Returns
    warnings: the models whose weights would leave no room on the device
    (``preflight.memory_warnings``)."""
    from orchestrator.preflight import (
        check_models,
        device_problem,
        manifest_models,
        memory_warnings,
        pending_by_batch,
        refusal,
    )

    problem = device_problem(device)
    if problem is not None:
        raise UsageError(problem)
    waiting = pending_by_batch(store)
    counts = {key: sum(w.jobs for w in batches) for key, batches in waiting.items()}
    if manifest is not None:
        # max, not sum: re-running a manifest finds its own jobs already waiting
        for key, n in manifest_models(manifest.jobs).items():
            counts[key] = max(counts.get(key, 0), n)
    problems = check_models(counts, backend, waiting)
    if problems:
        raise ModelsMissing(refusal(problems, submitting=manifest is not None), problems)
    if backend != "diffusers":
        return []
    return memory_warnings((model for model, _q in counts), device, low_memory)


def manifest_scope(store: JobStore, manifest: Manifest, result: SubmitResult) -> Counts:
    """Counts of a manifest's jobs. All of them new: its batch's trigger-kept counts (as
    cheap at a million jobs as at ten); some already known: counted by id, at most every
    few seconds (a million ids take seconds to count)."""
    batch_id = result.batch_id
    if result.duplicates == 0 and batch_id is not None:
        return lambda: store.count_jobs(batch_id)
    job_ids = store.find_job_ids([j.fingerprint() for j in manifest.jobs])
    return throttled(lambda: store.count_jobs_among(job_ids))


def throttled(fn: Counts, share: float = 0.1) -> Counts:
    """``fn``, called again only once ``1 / share`` times its last duration (and a second)
    has passed; in between, its last value."""
    last: dict[str, Any] = {"at": -1e9, "value": None, "cost": 0.0}

    def call() -> dict[str, int]:
        now = time.monotonic()
        if last["value"] is None or now - last["at"] >= max(1.0, last["cost"] / share):
            value = fn()
            last.update(at=time.monotonic(), value=value, cost=time.monotonic() - now)
        return dict(last["value"])

    call.__wrapped__ = fn  # type: ignore[attr-defined]  # the unthrottled count, for the summary
    return call


def work_queue(
    store: JobStore,
    settings: WorkerSettings,
    *,
    scope: Counts | None = None,
    progress: bool = False,
    on_event: Callable[[JobEvent], None] | None = None,
    say: Say = lambda _line: None,
) -> tuple[LocalWorker, WorkerStats]:
    """One worker on this machine until it stops (``settings.burst``: when no job is left).
    ``progress`` draws a bar of ``scope``'s jobs (the queue's without one) on stderr; SIGINT
    and SIGTERM stop the worker gently, each said through ``say``."""
    from orchestrator.progress import Progress
    from orchestrator.transports.local import LocalWorker

    bar = Progress(scope or store.count_jobs) if progress else None
    if bar is not None and on_event is not None:
        listener: Callable[[JobEvent], None] | None = _both(bar, on_event)
    else:
        listener = bar or on_event
    worker = LocalWorker(store, settings, on_event=listener)

    def on_signal(signum: int, _frame: Any) -> None:
        if worker.stopping:
            say("\nreleasing the current job and stopping now")
        elif worker.paused:
            say(
                f"\n{signal.Signals(signum).name}: stopping now; paused ({worker.paused}), so a "
                "job whose image cannot be saved is given back"
            )
        else:
            say(
                f"\n{signal.Signals(signum).name}: finishing the current job, then stopping "
                "(again to release it now)"
            )
        worker.request_stop()

    try:
        with stop_signals_handled(on_signal):
            stats = worker.run()
    finally:
        if bar is not None:
            bar.close()
    return worker, stats


@contextmanager
def stop_signals_handled(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` inside the block; the handlers before it after."""
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _both(
    first: Callable[[JobEvent], None], then: Callable[[JobEvent], None]
) -> Callable[[JobEvent], None]:
    def call(event: JobEvent) -> None:
        first(event)
        then(event)

    return call


@dataclass(frozen=True)
class RunReport:
    """How a run ended: its jobs by status (the manifest's, or without one the queue's),
    whether a signal stopped it, and its succeeded jobs whose images are not in place."""

    counts: dict[str, int]
    output: Path
    stopped: bool
    unpublished: dict[str, Any]  # ``JobStore.summarize_unpublished()``

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        """Succeeded or cancelled: a job the user cancelled is no failure."""
        return self.counts[JobStatus.SUCCEEDED] + self.counts[JobStatus.CANCELLED]

    def exit_code(self) -> int:
        """0: every job succeeded (or was cancelled) and is in place; 130: a signal stopped
        the run before that; 1 otherwise."""
        unpublished = self.unpublished["count"]
        if self.stopped and (self.finished != self.total or unpublished):
            return 130
        done = self.finished == self.total and self.counts[JobStatus.FAILED] == 0
        return 0 if done and not unpublished else 1


def run_manifest(
    store: JobStore,
    manifest: Manifest | None,
    settings: RunSettings,
    *,
    submitted: SubmitResult | None = None,
    progress: bool = True,
    on_event: Callable[[JobEvent], None] | None = None,
    say: Say = lambda _line: None,
) -> RunReport:
    """Work through the queue on this machine until no job is left, measured against
    ``manifest``'s jobs (``submitted``: what its submission added) or, without one, the whole
    queue; then run the completion hooks of each batch the run finished, and report."""
    scope = (
        manifest_scope(store, manifest, submitted)
        if manifest is not None and submitted is not None
        else None
    )
    active_before = store.list_active_batches()
    worker, _ = work_queue(
        store, settings.worker, scope=scope, progress=progress, on_event=on_event, say=say
    )
    hooks = Hooks(settings.notify_url, settings.on_done)
    if hooks:
        for batch_id in sorted(active_before - store.list_active_batches()):
            hooks.batch_done(batch_summary(store, batch_id))
    counts = (getattr(scope, "__wrapped__", scope) or store.count_jobs)()
    return RunReport(
        counts=counts,
        output=settings.worker.output_dir,
        stopped=worker.stopping,
        unpublished=store.summarize_unpublished(),
    )
