"""The one task a worker runs: a JSON job in; a JSON result and PNG bytes out.

Both transports (the local SQLite worker and, later, RQ) call ``run_job`` with the same payload,
and the pipeline stays loaded in a ``PipelineCache`` between jobs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.backends import GenerationRequest, JobInputError, JobInterrupted
from workers.metadata import a1111_parameters, encode_png

logger = logging.getLogger(__name__)

__all__ = ["JobInputError", "JobInterrupted", "PipelineCache", "TaskOutput", "run_job"]

REQUEST_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance_scale",
    "width",
    "height",
    "scheduler",
)


@dataclass
class TaskOutput:
    png: bytes
    result: dict[str, Any]  # plain JSON types only


class PipelineCache:
    """Holds the loaded pipeline of one model; loading another replaces it (one fits in memory)."""

    def __init__(
        self, *, backend: str = "diffusers", device: str = "auto", threads: int = 2
    ) -> None:
        if backend != "diffusers":
            raise ValueError(f"unknown backend {backend!r}")
        self.backend_name = backend
        self.device = device
        self.threads = threads
        self.current: Any = None

    @property
    def loaded_model(self) -> str | None:
        return None if self.current is None else self.current.model

    def get(self, model: str) -> tuple[Any, float]:
        """The backend for ``model`` and the seconds spent loading it now (0 when cached)."""
        if self.current is not None and self.current.model == model:
            return self.current, 0.0
        from workers.backends.diffusers import DiffusersBackend

        self.current = None  # free the old model before loading the next
        t0 = time.perf_counter()
        self.current = DiffusersBackend(model, device=self.device, threads=self.threads)
        load_s = time.perf_counter() - t0
        logger.info(
            "loaded model %s on %s in %.2fs",
            model,
            self.current.device,
            load_s,
            extra={"action": "model_loaded", "model": model, "load_s": load_s},
        )
        return self.current, load_s


def run_job(
    job: dict[str, Any],
    cache: PipelineCache,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> TaskOutput:
    """Generate the image of one job. Raises JobInterrupted when ``should_stop`` says so."""
    if job.get("quantization", "fp16") != "fp16":
        raise JobInputError(
            f"quantization {job['quantization']!r} is not available in this worker (only fp16)"
        )
    t_start = time.perf_counter()
    # 1. The pipeline, loaded once per process and model
    backend, load_s = cache.get(job["model"])
    request = GenerationRequest(**{k: job[k] for k in REQUEST_FIELDS})

    # 2. Generation
    gen = backend.generate(request, should_stop)

    # 3. PNG with A1111 parameters and our JSON
    t_enc = time.perf_counter()
    timings = {
        "load_s": load_s,
        "text_encode_s": gen.text_encode_s,
        "denoise_s": gen.denoise_s,
        "decode_s": gen.decode_s,
    }
    run_info = {
        "backend": backend.name,
        "device": backend.device,
        "dtype": backend.dtype,
        "torch_threads": backend.threads,
        "versions": backend.versions(),
    }
    parameters = a1111_parameters(
        job,
        {"Backend": f"{backend.name} {backend.device} {backend.dtype}", "Threads": backend.threads},
    )
    meta = {
        "job": {k: job[k] for k in job if k != "attempts"},
        "run": run_info,
        "timings": {**timings, "step_times": gen.step_times},
        "unet_evaluations": gen.unet_evaluations,
    }
    png = encode_png(gen.image, parameters, meta)
    t_end = time.perf_counter()

    result = {
        **run_info,
        **timings,
        "encode_s": t_end - t_enc,
        "total_s": t_end - t_start,
        "peak_mem_mb": backend.peak_memory_mb(),
        "unet_evaluations": gen.unet_evaluations,
        "width": gen.image.width,
        "height": gen.image.height,
    }
    return TaskOutput(png=png, result=result)
