"""Can this machine load a job's model? Answered before a run starts, without loading weights.

``orchestrate run`` checks every distinct (model, quantization) of the work it is about to do
(its manifest's and every waiting batch's: a run works through the whole queue), so a typo in a
model path or a hub id missing from an offline machine's cache is one message at the start,
naming the batches and the way out, not a failure per job discovered hours into an overnight
run. ``submit`` refuses local paths that are not here, at their lines (``--skip-model-check``
takes a manifest meant for workers on other machines), and warns about prompts for the tiny
model outside its world.

The checks mirror how the backends find a model (``workers.backends.diffusers.model_source``,
``workers.task.resolve_variant`` and ``resolve_coreml_folder``) but touch only the file system,
the local Hugging Face cache, and the hub when it can answer quickly (``workers.models.hub``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import JobInputError
from contract.limits import BLOCK_QUANTIZED, UNIFORM_BITS
from workers.models import expand_path, families, hub, looks_like_path

logger = logging.getLogger(__name__)

ModelKey = tuple[str, str]  # (model, quantization)


@dataclass(frozen=True)
class Waiting:
    """Jobs of one batch waiting in the queue for one model."""

    batch_id: int
    name: str  # the batch's name: its manifest's file name
    jobs: int

    def __str__(self) -> str:
        return f"{self.batch_id} ({self.name})"


def _batches(waiting: Sequence[Waiting]) -> str:
    """Batches in words: ``batch 1 (a.csv)``, ``batches 1 (a.csv) and 2 (b.csv)``."""
    return ("batch " if len(waiting) == 1 else "batches ") + _and([str(w) for w in waiting])


def _jobs(n: int) -> str:
    return f"{n} job{'' if n == 1 else 's'}"


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class ModelProblem:
    """A model (in one quantization) this machine cannot load, how many jobs need it, and
    which of them already wait in the queue (by batch)."""

    model: str
    quantization: str
    jobs: int
    reason: str
    waiting: tuple[Waiting, ...] = ()

    def __str__(self) -> str:
        variant = "" if self.quantization == "fp16" else f" ({self.quantization})"
        return f"model {self.model!r}{variant}, {self._who()}: {self.reason}"

    def _who(self) -> str:
        if not self.waiting:
            return _jobs(self.jobs)
        waiting = sum(w.jobs for w in self.waiting)
        if waiting >= self.jobs:
            return f"{_jobs(self.jobs)} waiting in {_batches(self.waiting)}"
        return f"{_jobs(self.jobs)} ({waiting} waiting in {_batches(self.waiting)})"


def refusal(problems: Sequence[ModelProblem], *, submitting: bool) -> str:
    """The sentence that refuses a run over ``problems``: how many models and jobs, and the
    way out for each batch of them already waiting (cancel it, or pause it for a machine that
    has the model)."""
    n = len(problems)
    jobs = sum(p.jobs for p in problems)
    head = (
        f"{n} model{'s' if n != 1 else ''} ({_jobs(jobs)}) cannot be loaded on this machine; "
        "nothing was " + ("submitted or " if submitting else "") + "run"
    )
    batches: dict[int, Waiting] = {}
    for p in problems:
        for w in p.waiting:
            batches.setdefault(w.batch_id, w)
    if not batches:
        return head + " (--skip-model-check runs anyway: those jobs fail)"
    ids = sorted(batches)
    waiting = sum(w.jobs for p in problems for w in p.waiting)
    who = "They wait" if waiting >= jobs else f"{waiting} of them wait"
    where = _batches([batches[i] for i in ids])
    more = f" (and {_and([f'--batch {i}' for i in ids[1:]])})" if len(ids) > 1 else ""
    it = "it" if len(ids) == 1 else "them"
    return (
        f"{head}. {who} in {where}: `orchestrate jobs cancel --batch {ids[0]}`{more} cancels "
        f"{it}, `orchestrate pause --batch {ids[0]}`{more} keeps {it} for a machine that has "
        "the model; --skip-model-check runs anyway (those jobs fail)"
    )


def _hub_problem(model: str) -> str | None:
    """Why a hub id cannot be loaded here: not a valid id; not cached while the hub cannot
    be reached (HF_HUB_OFFLINE, or its host does not answer: ``workers.models.hub.reachable``); or
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

    if quantization in UNIFORM_BITS or quantization in BLOCK_QUANTIZED:
        return None  # a uniform or int4 per-block variant: built from the model on first use
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
    from workers.models.checkpoints import family

    try:
        family(path)
    except Exception as exc:  # safetensors raises its own error types
        return f"{path} is not a readable .safetensors checkpoint ({exc})"
    return None


def check_models(
    counts: Mapping[ModelKey, int],
    backend: str = "diffusers",
    waiting: Mapping[ModelKey, Sequence[Waiting]] | None = None,
) -> list[ModelProblem]:
    """The models of ``counts`` (jobs per (model, quantization)) that cannot be loaded here,
    in order of the most jobs affected; ``waiting``: which batches of the queue hold them."""
    problems = []
    for key, n in counts.items():
        reason = model_problem(key[0], key[1], backend)
        if reason is not None:
            held = tuple((waiting or {}).get(key, ()))
            problems.append(ModelProblem(key[0], key[1], n, reason, held))
    return sorted(problems, key=lambda p: (-p.jobs, p.model, p.quantization))


# A model whose weights take more than this share of the device's memory leaves too little for
# the activations (and on a Mac, for everything else): warned about before the run.
MEMORY_SHARE = 0.8


def _weights_folder(model: str) -> Path | None:
    """The folder whose files a model loads from, where one is on this machine (a local
    folder, a cached hub id's snapshot); None for the built-in toys and anything else."""
    from workers.models import hub_snapshot, is_builtin, local_folder

    if is_builtin(model):
        return None  # megabytes: nothing to warn about, and not built just to be measured
    found = local_folder(model)
    if found is not None:
        return found
    if looks_like_path(model):
        return None
    return hub_snapshot(model)


def memory_warnings(models: Iterable[str], device: str, low_memory: bool = False) -> list[str]:
    """One line for each model whose weights would not leave room on ``device`` (``auto`` is
    what the backend would pick), with what ``--low-memory`` needs instead; from the
    safetensors headers of its folder, nothing loaded. Each checked model's figures are
    logged too."""
    from workers import memory

    found = {m: f for m in dict.fromkeys(models) if (f := _weights_folder(m)) is not None}
    if not found:
        return []
    if device == "auto":
        from workers.backends.diffusers import pick_device

        device = pick_device("auto")
    have = memory.device_bytes(device)
    lines = []
    for model, folder in found.items():
        elements = memory.component_elements(folder)
        if not elements:
            continue
        try:
            flow = families.detect_folder(folder).family.kind == families.FLOW
        except families.UnsupportedModel:
            continue  # refused by the model check already
        dtype = memory.run_dtype(device, flow)
        need = memory.need_bytes(elements, dtype, memory.offloads(device, flow, low_memory))
        parts = ", ".join(
            f"{name} {n * memory.DTYPE_BYTES[dtype] / 1e9:.1f}"
            for name, n in sorted(elements.items(), key=lambda kv: -kv[1])
        )
        logger.info(
            "model %s: weights %.1f GB in %s on %s (%s GB)%s",
            model,
            need / 1e9,
            dtype,
            device,
            parts,
            "" if have is None else f"; the device has {have / 1e9:.1f} GB",
        )
        if have is None or need <= MEMORY_SHARE * have:
            continue
        line = (
            f"model {model!r}: its weights take {need / 1e9:.1f} GB in {dtype} on {device} "
            f"({parts} GB), more than {MEMORY_SHARE:.0%} of its {have / 1e9:.1f} GB"
        )
        if memory.offloads(device, flow, True) and not low_memory:
            largest = memory.need_bytes(elements, dtype, True)
            line += (
                f"; --low-memory keeps each component on the {device} only while it runs "
                f"({largest / 1e9:.1f} GB at most)"
            )
        elif flow and device != "cuda":
            line += (
                f"; on {device} --low-memory cannot move them off (one memory pool): run a "
                "compressed variant (quantization = int4b32 keeps its transformer at 4.5 of 16 bits)"
            )
        lines.append(line)
    return lines


def manifest_models(jobs: Iterable[Any]) -> Counter[ModelKey]:
    """Jobs per (model, quantization) of a manifest's job specs."""
    return Counter((j.model, j.quantization) for j in jobs)


def pending_by_batch(store: Any) -> dict[ModelKey, list[Waiting]]:
    """The batches whose jobs wait in the queue to be run, per (model, quantization): one
    grouped query, a row per model and batch. Paused work is left out (a run does not take
    it)."""
    from sqlalchemy import func, select

    from contract.status import JobStatus
    from orchestrator.models import Batch, Job, QueueState

    stmt = (
        select(Job.model, Job.quantization, Batch.id, Batch.name, func.count())
        .join(Batch, Batch.id == Job.batch_id)
        .where(Job.status == JobStatus.PENDING.value, Batch.paused_at.is_(None))
        .group_by(Job.model, Job.quantization, Batch.id)
        .order_by(Batch.id)
    )
    found: dict[ModelKey, list[Waiting]] = {}
    with store.engine.connect() as conn:
        if conn.execute(select(QueueState.paused_at).where(QueueState.id == 1)).scalar():
            return found
        for model, quantization, batch_id, name, n in conn.execute(stmt):
            found.setdefault((model, quantization), []).append(Waiting(batch_id, name, int(n)))
    return found


def pending_models(store: Any) -> Counter[ModelKey]:
    """Jobs per (model, quantization) waiting in the queue to be run (paused work left out)."""
    return Counter(
        {key: sum(w.jobs for w in batches) for key, batches in pending_by_batch(store).items()}
    )


def device_problem(device: str) -> str | None:
    """Why the torch device asked for is not on this machine (``auto`` and ``cpu`` always are)."""
    if device not in ("cuda", "mps"):
        return None
    # Through the backend's module: it sets torch's environment before torch is imported.
    from contract.errors import ModelLoadError
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


SKIP_HINT = "--skip-model-check submits anyway, for workers on machines that have it"


def refuse_missing_folders(manifest: Any, flag_model: str) -> None:
    """Refuse a manifest whose model values look like local paths (``looks_like_path``) and
    are not on this machine: a ManifestError with one issue per such model, at the first
    line naming it (and the others counted), or a UsageError when it is ``--model``'s."""
    from contract.errors import ManifestError, ManifestIssue, UsageError

    lines: dict[str, list[int]] = {}
    seen: dict[str, bool] = {}
    for job in manifest.jobs:
        model = job.model
        if model not in seen:
            seen[model] = looks_like_path(model) and not expand_path(model).exists()
        if seen[model] and (not lines.get(model) or lines[model][-1] != job.line):
            lines.setdefault(model, []).append(job.line)
    if not lines:
        return
    if flag_model in lines:
        raise UsageError(
            f"--model {flag_model!r}: no such folder on this machine "
            f"({expand_path(flag_model).absolute()}); {SKIP_HINT}"
        )
    issues = []
    for model, where in lines.items():
        shown = ", ".join(str(n) for n in where[:10]) + (
            f" and {len(where) - 10} more" if len(where) > 10 else ""
        )
        rows = "" if len(where) == 1 else f"; lines {shown} name it"
        message = f"no such folder on this machine ({expand_path(model).absolute()}){rows}"
        issues.append(ManifestIssue(manifest.path, where[0], "model", model, message))
    issues.sort(key=lambda i: i.line)
    raise ManifestError(issues, note=f" ({SKIP_HINT})")


def tiny_world_warning(manifest: Any, *, shown: int = 10) -> str | None:
    """One sentence naming the lines whose prompts for the built-in tiny model are outside the
    world it was trained on (``workers.tiny.scenes``' grammar: it draws them anyway, and the
    built-in judge cannot score them), with the first such prompt and why; None when there
    are none."""
    from workers.models import is_tiny
    from workers.tiny.scenes import prompt_problem

    why: dict[str, str | None] = {}
    lines: dict[int, tuple[str, str]] = {}  # line -> its first prompt outside, and why
    for job in manifest.jobs:
        if job.line in lines or not is_tiny(job.model):
            continue
        if job.prompt not in why:
            why[job.prompt] = prompt_problem(job.prompt)
        problem = why[job.prompt]
        if problem is not None:
            lines[job.line] = (job.prompt, problem)
    if not lines:
        return None
    numbers = sorted(lines)
    listed = ", ".join(str(n) for n in numbers[:shown]) + (
        f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
    )
    first = numbers[0]
    prompt, problem = lines[first]
    text = " ".join(prompt.split())
    text = text if len(text) <= 60 else text[:57] + "..."
    grammar = '(the grammar: README, "The built-in tiny model")'
    if len(numbers) == 1:
        return (
            f"{manifest.path}: line {first} gives the built-in tiny model a prompt outside the "
            f"world it draws ({text!r}: {problem}); it is drawn anyway, and the built-in judge "
            f"cannot score it {grammar}"
        )
    return (
        f"{manifest.path}: {len(numbers)} lines ({listed}) give the built-in tiny model prompts "
        f"outside the world it draws (line {first}: {text!r}: {problem}); they are drawn "
        f"anyway, and the built-in judge cannot score them {grammar}"
    )
