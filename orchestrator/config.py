"""Settings shared by the commands; each comes from a flag, else an environment variable,
else the default here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = "./output"
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_MAX_ATTEMPTS = 3
# Fixed, not the core count: torch's thread count changes the pixels, so every machine uses
# the same one unless told otherwise (and records it with each attempt). Kept at 2 (issue 12):
# the cliff on a busy machine came from OpenMP's spinning waits, not from the count, and the
# workers now wait passively (workers/backends/diffusers.py); see benchmarks/threads.py.
DEFAULT_THREADS = 2
# The built-in tiny models' operations are too small for a second thread: with passive waits,
# 2 threads made a 64 px image 5.2x slower than 1 (benchmarks/drift.py; issue 11).
TINY_THREADS = 1
# The count for an image whose metadata records none: the default of the releases that made it.
# Never DEFAULT_THREADS: a new default must not change how old images are regenerated.
UNRECORDED_THREADS = 2


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
