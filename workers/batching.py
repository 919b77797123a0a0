"""How many compatible jobs a worker runs in one pipeline call (``--batch-size N|auto``).

A batch is jobs with one ``workers.task.batch_key`` (model variant, size, steps, scheduler,
guidance); each keeps its own seed, prompt, attempt, PNG and exactly-once recording.

``auto`` is 1 on the CPU: there the UNet evaluates image by image inside a batch, so that each
image is bit-identical to its lone run (``DiffusersBackend.fused_batches``), which saves little
(benchmarks/throughput.py); ``--fused-batches`` with an explicit size is the user's trade of
identity for speed. 1 with Core ML too, whose converted UNet has a fixed batch. On CUDA and MPS it is what the free device memory holds of the
batch's activations, by an estimate (below), between 1 and ``BATCH_SIZE.max``.
"""

from __future__ import annotations

from typing import Any

from contract.limits import BATCH_SIZE

AUTO = "auto"
# Estimated peak activation memory of one image (its guidance pair) in the UNet, per output
# pixel, in fp16 with PyTorch's SDPA attention: about 1 GiB for SD 1.5 at 512 x 512 and 4 GiB
# for SDXL at 1024 x 1024 (public reports of batch sizes that fit; not measured here, where no
# GPU is: the GPU rows of benchmarks/throughput.py are the place to check it).
ACTIVATION_BYTES_PER_PIXEL = 4096
FREE_MEMORY_SHARE = 0.8  # of what the device has free once the model is loaded


def parse_batch_size(value: str | int) -> int | str:
    """``auto`` or a whole number in ``BATCH_SIZE``; ValueError otherwise."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    low, high = BATCH_SIZE
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"batch size must be 'auto' or {low} to {high}, not {value!r}") from None
    if not low <= n <= high:
        raise ValueError(f"batch size must be 'auto' or {low} to {high}, not {n}")
    return n


def free_device_bytes(device: str) -> int | None:
    """What the device has free now (None when it cannot say)."""
    import torch

    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    if device == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return None


def auto_batch_size(device: str, width: int, height: int, *, dtype: str = "fp16") -> int:
    """The batch size ``auto`` means for images of ``width`` x ``height`` on ``device``."""
    if device in ("cpu", "coreml"):
        return 1
    free = free_device_bytes(device)
    if free is None:
        return 1
    per_image = ACTIVATION_BYTES_PER_PIXEL * width * height * (2 if dtype == "fp32" else 1)
    return max(BATCH_SIZE.min, min(BATCH_SIZE.max, int(free * FREE_MEMORY_SHARE // per_image)))


def batch_limit(setting: int | str, backend: Any, job: dict[str, Any]) -> int:
    """How many jobs like ``job`` to take at once under ``setting`` (a number, or ``auto``
    resolved for ``backend``, the loaded one, or None before any model is loaded: then the
    first batch runs alone and loads the model)."""
    if setting != AUTO:
        return int(setting)
    if backend is None:
        return 1
    device = "coreml" if backend.name == "coreml" else backend.device
    return auto_batch_size(device, int(job["width"]), int(job["height"]), dtype=backend.dtype)
