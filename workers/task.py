"""The one task a worker runs: a JSON job in; a JSON result and PNG bytes out.

Both transports (the local SQLite worker and, later, RQ) call ``run_job`` with the same payload,
and the pipeline stays loaded in a ``PipelineCache`` between jobs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from contract.errors import JobInputError, JobInterrupted
from contract.job import BATCH_FIELDS, GATE_FIELDS, PIXEL_FIELDS, GenerationRequest
from contract.limits import (
    BACKENDS,
    BLOCK_QUANTIZED,
    DEFAULT_QUALITY_TRIES,
    DEFAULT_THREADS,
    TINY_THREADS,
    UNIFORM_BITS,
)
from workers import memory
from workers.backends import GenerationResult
from workers.metadata import a1111_parameters, encode_png
from workers.quality import Judge, attempt_seeds, gate_failure, gate_round, make_judge
from workers.tuning import Tuning

logger = logging.getLogger(__name__)

__all__ = [
    "BatchRunner",
    "Outcome",
    "PipelineCache",
    "Runner",
    "TaskOutput",
    "batch_key",
    "batch_runner_for",
    "default_runner",
    "run_job",
    "run_jobs",
    "sequential",
]

# Fields of a payload that belong to one try of a job, not to the job: kept out of the PNG.
_DISPATCH_FIELDS = ("attempt", "attempts", "gate_round", "token", "sig")


@dataclass
class TaskOutput:
    png: bytes
    result: dict[str, Any]  # plain JSON types only


def threads_for(model: str, requested: int | None = None) -> int:
    """The torch thread count a model runs with: ``requested`` (``--threads``) when given,
    else 1 for the built-in tiny models and 2 for any other (fixed, never the core count: the
    count changes the pixels, and every image records it)."""
    from workers.models import is_builtin

    if requested is not None:
        return requested
    return TINY_THREADS if is_builtin(model) else DEFAULT_THREADS


class PipelineCache:
    """Holds the loaded pipeline of one model; loading another replaces it (one fits in memory)."""

    def __init__(
        self,
        *,
        backend: str = "diffusers",
        device: str = "auto",
        threads: int | None = None,
        compute_units: str = "CPU_AND_NE",
        judge: Judge | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
        self.backend_name = backend
        self.device = device
        self.threads = threads
        self.compute_units = compute_units
        self.tuning = tuning or Tuning()
        self.current: Any = None
        self.loading: str | None = None  # the model being loaded now, if one is
        # What scores a gated job's images here (``--judge``): the worker's setting, never
        # the job's. Kept with the pipeline, as every job of this worker uses it.
        self.judge: Judge = judge if judge is not None else make_judge(None)

    @property
    def loaded_model(self) -> str | None:
        return None if self.current is None else self.current.model

    def get(self, model: str, quantization: str = "fp16") -> tuple[Any, float]:
        """The backend for ``model`` (in its ``quantization`` variant) and the seconds spent
        loading it now (0 when cached)."""
        current = self.current
        if current is not None and (current.model, current.quantization) == (model, quantization):
            return current, 0.0
        self.current = None  # free the old model before loading the next
        self.loading = model
        try:
            return self._load(model, quantization)
        finally:
            self.loading = None

    def _load(self, model: str, quantization: str) -> tuple[Any, float]:
        t0 = time.perf_counter()
        if self.backend_name == "coreml":
            from workers.backends.coreml import CoreMLBackend, check_platform

            check_platform()  # before any lookup: the one-sentence refusal off macOS
            folder = resolve_coreml_folder(model, quantization)
            self.current = CoreMLBackend(
                model, folder, compute_units=self.compute_units, quantization=quantization
            )
            return self.current, time.perf_counter() - t0
        from workers.backends.diffusers import DiffusersBackend

        source = resolve_variant(model, quantization)
        self.current = DiffusersBackend(
            model,
            source=source,
            quantization=quantization,
            device=self.device,
            threads=threads_for(model, self.threads),
            tuning=self.tuning,
        )
        load_s = time.perf_counter() - t0
        logger.info(
            "loaded model %s on %s in %.2fs",
            model,
            self.current.device,
            load_s,
            extra={"action": "model_loaded", "model": model, "load_s": load_s},
        )
        return self.current, load_s


def resolve_variant(model: str, quantization: str) -> str | None:
    """The folder of a compressed variant (None for the unquantized model). Uniform 8/6/4-bit
    and int4 per-block variants are built on first use; a recipe variant must have been made
    with ``orchestrate model compress``."""
    if quantization == "fp16":
        return None
    from workers.compression import registry
    from workers.compression.variants import ensure_block_variant, ensure_uniform_variant

    if quantization in UNIFORM_BITS:
        return str(ensure_uniform_variant(model, quantization))
    if quantization in BLOCK_QUANTIZED:
        return str(ensure_block_variant(model, quantization))
    found = registry.lookup(model, quantization, "torch")
    if found is None:
        raise JobInputError(
            f"no compressed variant {quantization!r} of model {model!r} on this worker"
            f"{registry.stale_note(model, quantization, 'torch')}; make it with "
            f"`orchestrate model compress --model {model} --recipe ANALYSIS.json:{quantization} "
            "--format torch`"
        )
    return str(found)


def resolve_coreml_folder(model: str, quantization: str) -> Any:
    """A Core ML folder for (model, quantization): registered by ``model convert|compress``,
    or ``model`` itself when it names such a folder."""
    from pathlib import Path

    from workers.backends.coreml_folder import is_coreml_folder
    from workers.compression import registry

    if quantization in BLOCK_QUANTIZED:
        raise JobInputError(
            f"{quantization} is a torch variant (--backend diffusers); a Core ML int4 per-block "
            "export is not built (palettize one with `orchestrate model convert --bits 4`)"
        )
    found = registry.lookup(model, quantization, "coreml")
    if found is not None:
        return found
    if quantization == "fp16" and is_coreml_folder(Path(model).expanduser()):
        return Path(model).expanduser()  # ours, or Apple's (Swift resources or packages)
    raise JobInputError(
        f"no Core ML variant {quantization!r} of model {model!r} on this worker"
        f"{registry.stale_note(model, quantization, 'coreml')}; make one with "
        f"`orchestrate model convert --model {model} --out DIR` (with --bits or --recipe to compress)"
    )


def run_job(
    job: dict[str, Any],
    cache: PipelineCache,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> TaskOutput:
    """Generate the image of one job. Raises JobInterrupted when ``should_stop`` says so.

    A job with a quality gate (``min_score``) has each image scored by ``cache.judge`` and
    keeps the first that reaches it, trying up to ``quality_tries`` seeds in this attempt
    (``workers.quality.attempt_seeds``); when none does, QualityGateFailed."""
    t_start = time.perf_counter()
    gate = job.get("min_score")
    min_score = float(gate) if gate is not None else 0.0
    judge = cache.judge if gate is not None else None
    if judge is not None:
        judge.check(job["prompt"])  # a prompt it can never score: refused before any work
    # 1. The pipeline, loaded once per process and model variant
    backend, load_s = cache.get(job["model"], job.get("quantization", "fp16"))
    tries = int(job.get("quality_tries") or DEFAULT_QUALITY_TRIES)
    seeds = [job["seed"]] if judge is None else attempt_seeds(job["seed"], gate_round(job), tries)

    # 2. Generation (each try of a gated job scored as it comes), its peak memory measured
    # on its own
    measured = memory.reset_peak(backend.device)
    tried: list[tuple[int, float]] = []
    judge_s = 0.0
    for seed in seeds:
        if tried and should_stop is not None and should_stop():
            raise JobInterrupted("stopped between the quality gate's tries")
        gen = backend.generate(dataclasses.replace(_request(job), seed=seed), should_stop)
        if judge is None:
            break
        t_judge = time.perf_counter()
        tried.append((seed, judge.score(gen.image, job["prompt"], should_stop)))
        judge_s += time.perf_counter() - t_judge
        if tried[-1][1] >= min_score:
            break
    else:  # every seed of this attempt scored under the gate
        raise gate_failure(min_score, tried)
    peak = memory.peak_mb(backend.device) if measured else None

    # 3. PNG with A1111 parameters and our JSON

    quality: dict[str, Any] = {}
    quality_meta: dict[str, Any] = {}
    if judge is not None:
        quality = {
            "score": tried[-1][1],
            "image_seed": seed,
            "judge": judge.name,
            "scores": [[s, v] for s, v in tried],
        }
        quality_meta = {
            **quality,
            "job_seed": job["seed"],
            "min_score": min_score,
            "quality_tries": tries,
            "judge_s": judge_s,
        }
    return _package(job, backend, gen, seed, load_s, peak, t_start, quality, quality_meta)


def _package(
    job: dict[str, Any],
    backend: Any,
    gen: GenerationResult,
    seed: int,
    load_s: float,
    peak: float | None,
    t_start: float,
    quality: dict[str, Any] | None = None,
    quality_meta: dict[str, Any] | None = None,
) -> TaskOutput:
    """The PNG (A1111 parameters and our JSON) and the result of one generated image.
    ``t_start``: when this job's share of the work began (a batch's start, moved on by the
    shares of the jobs before it)."""
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
        "tuning": getattr(backend, "tuning_label", ""),
        "torch_threads": backend.threads,
        "versions": backend.versions(),
    }
    # The job as its row says, not how this try of it was sent (attempt, dispatch token),
    # and with the seed that made this image: a gated job's PNG regenerates without its gate.
    image_job = {k: job[k] for k in job if k not in _DISPATCH_FIELDS and k not in GATE_FIELDS}
    image_job["seed"] = seed
    extra: dict[str, Any] = {
        "Backend": f"{backend.name} {backend.device} {backend.dtype}",
        "Threads": backend.threads,
    }
    if run_info["tuning"]:
        extra["Tuning"] = run_info["tuning"]
    fields = getattr(backend, "a1111_fields", None)  # a flow model's schedule and guidance
    if fields is not None:
        extra.update(fields(image_job))
    if gen.batch_size > 1:
        extra["Batch size"] = gen.batch_size
    parameters = a1111_parameters(image_job, extra)
    meta: dict[str, Any] = {
        "job": image_job,
        "run": {**run_info, "batch_size": gen.batch_size},
        # Above batch size 1 the stage times are the batch's, shared out equally.
        "timings": {**timings, "step_times": gen.step_times, "shared": gen.batch_size > 1},
        "unet_evaluations": gen.unet_evaluations,
    }
    if gen.truncated:  # what of the prompt a text encoder never saw
        meta["prompt_truncated"] = gen.truncated
        logger.warning(
            "job %s: the prompt is longer than %s reads; the rest was left out",
            job.get("id"),
            ", ".join(
                f"{name} ({kept} of {tokens} tokens)"
                for name, (tokens, kept) in gen.truncated.items()
            ),
            extra={"action": "prompt_truncated", "job_id": job.get("id")},
        )
    if quality_meta:
        meta["quality"] = quality_meta
    png = encode_png(gen.image, parameters, meta, model=image_job["model"])
    t_end = time.perf_counter()

    result = {
        **run_info,
        **timings,
        "encode_s": t_end - t_enc,
        "total_s": t_end - t_start,
        "peak_mem_mb": peak,
        "unet_evaluations": gen.unet_evaluations,
        "width": gen.image.width,
        "height": gen.image.height,
        "batch_size": gen.batch_size,
        **(quality or {}),
    }
    return TaskOutput(png=png, result=result)


# -- micro-batches -----------------------------------------------------------------------------

Outcome = TaskOutput | Exception  # an image, or why not (JobInterrupted: not finished)
# How a transport runs one job, and several at once (both replaceable in tests).
Runner = Callable[[dict[str, Any], "PipelineCache", Callable[[], bool]], TaskOutput]
BatchRunner = Callable[[list[dict[str, Any]], "PipelineCache", Callable[[], bool]], list[Outcome]]


def batch_key(job: dict[str, Any]) -> tuple[Any, ...] | None:
    """Jobs with equal keys may share one pipeline call: same model variant, size, steps,
    scheduler and guidance (prompts, negative prompts and seeds may differ). None: the job
    runs alone (a quality gate scores and retries its seeds one at a time)."""
    if job.get("min_score") is not None:
        return None
    return (
        job["model"],
        job.get("quantization", "fp16"),
        *(job[f] for f in BATCH_FIELDS),
    )


def run_jobs(
    jobs: Sequence[dict[str, Any]],
    cache: PipelineCache,
    *,
    should_stop: Callable[[], bool] | None = None,
    reraise: tuple[type[BaseException], ...] = (),
) -> list[Outcome]:
    """The outcome of each of several jobs with one ``batch_key``, made in one pipeline call.

    Never raises for a job: each gets its TaskOutput, its error, or JobInterrupted when a
    stop came first. When the shared call fails, the jobs run again one by one, so a bad job
    fails only itself. ``reraise``: exceptions that end the whole call (RQ's job timeout)."""
    if len(jobs) == 1 or batch_key(jobs[0]) is None:
        return _one_by_one(jobs, cache, should_stop, reraise)
    if any(batch_key(j) != batch_key(jobs[0]) for j in jobs):
        raise ValueError("run_jobs was given jobs that cannot share a pipeline call")
    t_start = time.perf_counter()
    n = len(jobs)
    try:
        backend, load_s = cache.get(jobs[0]["model"], jobs[0].get("quantization", "fp16"))
        measured = memory.reset_peak(backend.device)
        gens = backend.generate_batch([_request(j) for j in jobs], should_stop)
        peak = memory.peak_mb(backend.device) if measured else None
    except reraise:
        raise
    except JobInterrupted as exc:
        return [exc for _ in jobs]
    except Exception as exc:
        logger.warning("a batch of %d jobs failed (%s); running them one by one", n, exc)
        return _one_by_one(jobs, cache, should_stop, reraise)
    share = (time.perf_counter() - t_start) / n
    outcomes: list[Outcome] = []
    for job, gen in zip(jobs, gens, strict=True):
        try:
            # total_s: this job's share of the load and the call, then its own PNG encoding.
            start = time.perf_counter() - share
            outcomes.append(_package(job, backend, gen, job["seed"], load_s / n, peak, start))
        except Exception as exc:  # its PNG could not be made: this job alone fails
            outcomes.append(exc)
    return outcomes


def _request(job: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(**{k: job[k] for k in PIXEL_FIELDS})


def _one_by_one(
    jobs: Sequence[dict[str, Any]],
    cache: PipelineCache,
    should_stop: Callable[[], bool] | None,
    reraise: tuple[type[BaseException], ...],
) -> list[Outcome]:
    return sequential(lambda j, c, s: run_job(j, c, should_stop=s), reraise)(
        list(jobs), cache, should_stop or (lambda: False)
    )


def default_runner(
    job: dict[str, Any], cache: PipelineCache, should_stop: Callable[[], bool]
) -> TaskOutput:
    """How both transports run one job (tests replace it with stand-ins)."""
    return run_job(job, cache, should_stop=should_stop)


def batch_runner_for(runner: Runner, reraise: tuple[type[BaseException], ...] = ()) -> BatchRunner:
    """How a transport runs a batch: ``run_jobs`` (one pipeline call) for the real runner,
    job by job through a stand-in runner. ``reraise``: exceptions that end the whole call."""
    if runner is default_runner:
        return lambda jobs, cache, stop: run_jobs(jobs, cache, should_stop=stop, reraise=reraise)
    return sequential(runner, reraise)


def sequential(runner: Runner, reraise: tuple[type[BaseException], ...] = ()) -> BatchRunner:
    """A batch runner that runs each job alone through ``runner`` (after a failed shared
    call, and for tests' stand-in runners)."""

    def run(
        jobs: list[dict[str, Any]], cache: PipelineCache, should_stop: Callable[[], bool]
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for job in jobs:
            if outcomes and should_stop():
                outcomes.append(JobInterrupted("stopped before this job of the batch"))
                continue
            try:
                outcomes.append(runner(job, cache, should_stop))
            except reraise:
                raise
            except Exception as exc:  # JobInterrupted included: the caller tells them apart
                outcomes.append(exc)
        return outcomes

    return run
