"""Peak memory of one job, not of the process's lifetime.

- Linux: the process's resident-set high-water mark (``VmHWM``) is reset before each job by
  writing 5 to ``/proc/self/clear_refs`` and read after it: the job's own peak RSS.
- CUDA: torch's allocator peak, reset per job (``max_memory_allocated``), in MB of GPU memory.
- Elsewhere (macOS CPU, MPS, Core ML) no per-job peak can be read without sampling, so the
  job records None rather than the process's lifetime maximum, which would mislead.
"""

from __future__ import annotations

import sys
from pathlib import Path

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak(device: str) -> bool:
    """Start a job's measurement; False where no per-job peak can be had."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return True
    if sys.platform.startswith("linux"):
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            return False
        return True
    return False


def peak_mb(device: str) -> float | None:
    """The peak since ``reset_peak`` in MB, or None where it cannot be known."""
    if device == "cuda":
        import torch

        return float(torch.cuda.max_memory_allocated()) / 2**20
    if sys.platform.startswith("linux"):
        try:
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
    return None
