"""Can this machine load a job's model? Answered before a run starts, without loading weights.

``orchestrate run`` checks every distinct (model, quantization) of the work it is about to do,
so a typo in a model path or a hub id missing from an offline machine's cache is one message
at the start, not a failure per job discovered hours into an overnight run. ``submit`` only
warns about local paths that are not here: its manifest may be meant for another machine.

The checks mirror how the backends find a model (``workers.backends.diffusers.model_source``,
``workers.task.resolve_variant`` and ``resolve_coreml_folder``) but touch only the file system
and the local Hugging Face cache.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import JobInputError
from workers import families, hub
from workers.models import expand_path, looks_like_path

ModelKey = tuple[str, str]  # (model, quantization)


@dataclass(frozen=True)
class ModelProblem:
    """A model (in one quantization) this machine cannot load, and how many jobs need it."""

    model: str
    quantization: str
    jobs: int
    reason: str

    def __str__(self) -> str:
        variant = "" if self.quantization == "fp16" else f" ({self.quantization})"
        plural = "job" if self.jobs == 1 else "jobs"
        return f"model {self.model!r}{variant}, {self.jobs} {plural}: {self.reason}"


def _offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_problem(model: str) -> str | None:
    """Why a hub id cannot be loaded here: not a valid id; not cached while the hub cannot
    be reached (HF_HUB_OFFLINE, or its host does not answer: ``workers.hub.reachable``); or
    not a model the hub has (one request, no retries). None when it is cached, or the hub
    has it (or cannot tell): the first job downloads it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return (
            f"not a built-in model{hub.did_you_mean(model)}, not a local diffusers folder, "
            "and not a valid Hugging Face hub id"
        )
    if hub.is_cached(model):
        return None
    if not hub.online():
        return hub.not_found_reason(model)
    if hub.exists(model) is False:
        return hub.missing_on_hub_reason(model)
    return None


def model_problem(model: str, quantization: str = "fp16", backend: str = "diffusers") -> str | None:
    """Why ``model`` in ``quantization`` cannot be loaded by ``backend`` on this machine, or
    None when it can (as far as can be told without loading it)."""
    from workers.models import checkpoint_file, is_builtin, local_folder

    if backend == "coreml":
        from workers.task import resolve_coreml_folder

        try:
            resolve_coreml_folder(model, quantization)
        except JobInputError as exc:
            return str(exc)
        return None

    if is_builtin(model):
        problem = None  # shipped with the package, or built from code on first use
    elif (found := local_folder(model)) is not None:
        problem = _family_problem(families.folder_reader(found))
    elif checkpoint_file(model) is not None:
        problem = _checkpoint_problem(checkpoint_file(model))  # type: ignore[arg-type]
    elif looks_like_path(model) or expand_path(model).exists():
        folder = expand_path(model)
        if not folder.exists():
            problem = f"no such folder on this machine ({folder.absolute()})"
        elif not folder.is_dir():
            problem = f"{folder.absolute()} is a file, not a diffusers folder"
        else:
            problem = f"not a diffusers folder (no model_index.json in {folder.absolute()})"
    else:
        problem = _hub_problem(model) or _family_problem(families.hub_cache_reader(model))
    if problem is not None or quantization == "fp16":
        return problem

    from workers.compression import registry

    if quantization in ("8bit", "6bit", "4bit"):
        return None  # a uniform variant: built from the model on first use
    if registry.lookup(model, quantization, "torch") is None:
        return (
            f"no compressed variant {quantization!r} of it on this machine"
            f"{registry.stale_note(model, quantization, 'torch')}; make it with "
            f"`orchestrate model compress --model {model} --recipe ANALYSIS.json:{quantization} "
            "--format torch`"
        )
    return None


def _family_problem(read: families.Reader) -> str | None:
    """Why the model whose configs ``read`` reads is of a kind the backend does not run (a
    hub id not in the cache has none to read: nothing is said)."""
    try:
        families.detect(read)
    except families.UnsupportedModel as exc:
        return str(exc)
    return None


def _checkpoint_problem(path: Path) -> str | None:
    """A single-file checkpoint loads if it is a readable safetensors file; one of the tiny
    family brings its configuration, others need their family's in the Hugging Face cache
    (which diffusers alone can tell, from the weights: the load says so if it is missing)."""
    from workers.checkpoints import family

    try:
        family(path)
    except Exception as exc:  # safetensors raises its own error types
        return f"{path} is not a readable .safetensors checkpoint ({exc})"
    return None


def check_models(counts: dict[ModelKey, int], backend: str = "diffusers") -> list[ModelProblem]:
    """The models of ``counts`` (jobs per (model, quantization)) that cannot be loaded here,
    in order of the most jobs affected."""
    problems = []
    for (model, quantization), n in counts.items():
        reason = model_problem(model, quantization, backend)
        if reason is not None:
            problems.append(ModelProblem(model, quantization, n, reason))
    return sorted(problems, key=lambda p: (-p.jobs, p.model, p.quantization))


def manifest_models(jobs: Iterable[Any]) -> Counter[ModelKey]:
    """Jobs per (model, quantization) of a manifest's job specs."""
    return Counter((j.model, j.quantization) for j in jobs)


def pending_models(store: Any) -> Counter[ModelKey]:
    """Jobs per (model, quantization) waiting in the queue to be run: one grouped query, as
    many rows as there are distinct models. Paused work is left out (a run does not take it)."""
    from sqlalchemy import func, select

    from orchestrator.models import Batch, Job, JobStatus, QueueState

    stmt = (
        select(Job.model, Job.quantization, func.count())
        .join(Batch, Batch.id == Job.batch_id)
        .where(Job.status == JobStatus.PENDING.value, Batch.paused_at.is_(None))
        .group_by(Job.model, Job.quantization)
    )
    with store.engine.connect() as conn:
        if conn.execute(select(QueueState.paused_at).where(QueueState.id == 1)).scalar():
            return Counter()
        return Counter({(m, q): int(n) for m, q, n in conn.execute(stmt)})


def device_problem(device: str) -> str | None:
    """Why the torch device asked for is not on this machine (``auto`` and ``cpu`` always are)."""
    if device not in ("cuda", "mps"):
        return None
    # Through the backend's module: it sets torch's environment before torch is imported.
    from workers.backends import ModelLoadError
    from workers.backends.diffusers import pick_device

    try:
        pick_device(device)
    except ModelLoadError as exc:
        return str(exc)
    return None


def missing_local_paths(counts: dict[ModelKey, int]) -> list[tuple[str, int]]:
    """Model values that look like local paths and do not exist on this machine, with the
    number of jobs naming each (for ``submit``'s warning)."""
    per_model: Counter[str] = Counter()
    for (model, _q), n in counts.items():
        if looks_like_path(model) and not expand_path(model).exists():
            per_model[model] += n
    return sorted(per_model.items())
