"""Settings shared by the commands; each comes from a flag, else an environment variable,
else the default here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = "./output"
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class WorkerSettings:
    output_dir: Path
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    threads: int | None = None  # None: per model (workers.task.threads_for)
    device: str = "auto"
    poll_seconds: float = 1.0
    pause_seconds: float = 5.0  # between tries while the disk or the database is full or busy
    max_jobs: int | None = None
    burst: bool = False
    backend: str = "diffusers"
    compute_units: str = "CPU_AND_NE"
    judge: str | None = None  # --judge: a command that scores gated jobs' images (None: built in)
    batch_size: int | str = 1  # --batch-size: jobs per pipeline call, or "auto" (workers.batching)
    tuning: Any = None  # workers.tuning.Tuning (--compile, --channels-last, --low-memory)


@dataclass(frozen=True)
class RunSettings:
    """What ``orchestrator.run.run_manifest`` needs: the worker's settings, and the
    completion hooks of each batch a run finishes."""

    worker: WorkerSettings
    notify_url: str | None = None  # --notify-url
    on_done: str | None = None  # --on-done
