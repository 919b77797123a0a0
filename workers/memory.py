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


# -- what a model needs, before it is loaded ----------------------------------------------------

_WEIGHT_SUFFIXES = (".safetensors",)
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def _safetensors_numel(path: Path) -> int:
    """Elements stored in a ``.safetensors`` file, from its JSON header (no tensor is read)."""
    import json
    import math

    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if size <= 0 or size > 100_000_000:
            raise ValueError(f"{path}: not a safetensors header")
        header = json.loads(fh.read(size))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors header")
    return sum(
        math.prod(entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict)
    )


def component_elements(folder: Path) -> dict[str, int]:
    """Weights (elements) of each component of a diffusers folder that its pipeline loads
    (``transformer``, ``unet``, ``text_encoder_2``, ``vae``...: the ones ``model_index.json``
    names), read from the safetensors headers of the files ``from_pretrained`` reads (a
    variant's copy, ``*.fp16.safetensors``, is not counted again); {} when it has none."""
    import json

    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict):
        return {}
    components = [k for k, v in index.items() if isinstance(v, list) and not k.startswith("_")]
    found: dict[str, int] = {}
    for name in components:
        for path in sorted((folder / name).glob("*.safetensors")):
            if "." in path.stem:  # diffusion_pytorch_model.fp16: another variant's copy
                continue
            try:
                n = _safetensors_numel(path)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            found[name] = found.get(name, 0) + n
    return found


def device_bytes(device: str) -> int | None:
    """Memory the device has: a CUDA GPU's own; the machine's RAM for the CPU and for Apple's
    MPS (unified memory; macOS lets the GPU use most of it, not all); None when unknown."""
    import os

    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def run_dtype(device: str, flow: bool) -> str:
    """The dtype the diffusers backend runs a model in on ``device`` (the backend asks here; the
    model check too, without loading anything): fp32 on the CPU (fp16 is slow and partly
    unsupported there), bf16 for a flow model on a GPU (FLUX overflows fp16), else fp16."""
    if device == "cpu":
        return "fp32"
    return "bf16" if flow else "fp16"


def offloads(device: str, flow: bool, low_memory: bool) -> bool:
    """Whether ``--low-memory`` keeps a model's components off the device but the one running:
    a flow model on a CUDA GPU (``workers.tuning.apply``)."""
    return low_memory and flow and device == "cuda"


def need_bytes(elements: dict[str, int], dtype: str, offloaded: bool) -> int:
    """The device memory a model's weights take in ``dtype``: all components at once, or when
    ``offloaded`` (model CPU offload) the largest one. Activations come on top: a few GB at
    1024 px on a GPU."""
    per = DTYPE_BYTES[dtype]
    if not elements:
        return 0
    return per * (max(elements.values()) if offloaded else sum(elements.values()))
