"""Settings shared by the commands; each comes from a flag, else an environment variable,
else the default here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUTPUT = "./output"
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_MAX_ATTEMPTS = 3
# Fixed, not the core count: torch's thread count changes the pixels, so every machine uses
# the same one unless told otherwise (and records it with each attempt).
DEFAULT_THREADS = 2


@dataclass(frozen=True)
class WorkerSettings:
    output_dir: Path
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    threads: int = DEFAULT_THREADS
    device: str = "auto"
    poll_seconds: float = 1.0
    pause_seconds: float = 5.0  # between tries while the disk or the database is full or busy
    max_jobs: int | None = None
    burst: bool = False
    backend: str = "diffusers"
    compute_units: str = "CPU_AND_NE"
