"""What the commands share: the ``orchestrate`` group they register on, settings from flags or
environment, option groups, helpers."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from contract import waiting
from contract.errors import ManifestError, TransientError, UsageError
from contract.limits import (
    BACKENDS,
    COMPUTE_UNITS,
    DEFAULT_QUALITY_TRIES,
    DEVICES,
    GUIDANCE,
    QUALITY_TRIES,
    QUANTIZATIONS,
    SCORE,
    SIZE,
    STEPS,
)
from contract.waiting import Backoff
from orchestrator import __version__
from orchestrator.config import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_OUTPUT,
    RunSettings,
    WorkerSettings,
)
from orchestrator.extras import require as require_extra
from orchestrator.manifest import MAX_JOBS, VARIANT_NAME, Defaults, Manifest
from orchestrator.presets import MIXED, PRESET_NAMES
from workers.models import BUILTIN_MODELS
from workers.models.schedulers import FLOW_SCHEDULERS, SCHEDULER_NAMES
from workers.quality import BUILTIN

if TYPE_CHECKING:
    from orchestrator.store import JobStore

T = TypeVar("T")
logger = logging.getLogger(__name__)

CONTEXT = {
    "auto_envvar_prefix": "ORCHESTRATE",
    "show_default": True,
    "help_option_names": ["-h", "--help"],
}


class State:
    def __init__(self, db: str | None, output: str) -> None:
        self.db = db
        self.output = Path(output).expanduser().absolute()
        self._store: JobStore | None = None

    @property
    def url(self) -> str:
        from orchestrator.database import database_url

        return database_url(self.db)

    def store(self, *, existing: bool = False) -> JobStore:
        """The job store; with ``existing``, refuse to create a database that is not there
        (commands that only read or act on jobs: an empty new database would only mislead)."""
        if self._store is None:
            from orchestrator.database import open_engine, sqlite_path
            from orchestrator.store import JobStore

            path = sqlite_path(self.url)
            if existing and path is not None and not path.exists():
                raise UsageError(
                    f"no job database at {path}: run `orchestrate submit` or `run` here first, "
                    "or name one with --db / ORCHESTRATE_DB"
                )
            self._store = JobStore(open_engine(self.url))
        return self._store


pass_state = click.make_pass_decorator(State)


# The ``orchestrate`` group: every command module registers on it.
@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="orchestrate")
@click.option(
    "--db",
    envvar="ORCHESTRATE_DB",
    show_envvar=True,
    default=None,
    help="Job database: a path or SQLAlchemy URL [default: ./orchestrate.db].",
)
@click.option(
    "--output",
    envvar="ORCHESTRATE_OUTPUT",
    show_envvar=True,
    default=DEFAULT_OUTPUT,
    help="Folder for images: <output>/<batch>/<job-id>.png.",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, db: str | None, output: str, verbose: int) -> None:
    """Turn a CSV of prompts into a finished, reproducible image dataset."""
    ctx.obj = State(db, output)
    ctx.meta["verbose"] = verbose


def claim_output(state: State) -> None:
    """Before anything is submitted or run: refuse an output folder that belongs to another
    database (without creating this one), and record this database as the owner of one that
    nobody owns. A folder that cannot be written yet is said, not fatal: each job's publish
    meets it again."""
    from orchestrator.database import sqlite_path
    from orchestrator.ownership import Owner, claim, read_owner, refuse

    path = sqlite_path(state.url)
    if path is not None and not path.exists():
        owner = read_owner(state.output)
        if owner is not None:
            raise refuse(state.output, owner, Owner("", str(path.absolute()), 0.0))
    try:
        claim(state.output, state.store().identify_owner())
    except OSError as exc:
        logger.warning(
            "cannot write into the output folder %s: %s", state.output, exc.strerror or exc
        )


def option(*names: str, **kw: Any) -> Callable[[Any], Any]:
    kw.setdefault("show_envvar", True)
    return click.option(*names, **kw)


def image_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """What decides one image's pixels (defaults for a manifest's columns; ``generate``'s own)."""
    d = Defaults()
    opts = [
        option("--steps", type=click.IntRange(*STEPS), default=d.steps, help="Denoising steps."),
        option(
            "--guidance-scale",
            type=click.FloatRange(*GUIDANCE),
            default=d.guidance_scale,
            help="CFG scale (FLUX.1 dev: its distilled guidance; schnell: none).",
        ),
        option(
            "--scheduler",
            type=click.Choice(SCHEDULER_NAMES),
            default=d.scheduler,
            help="Sampler (flow models: " + ", ".join(FLOW_SCHEDULERS) + ").",
        ),
        option(
            "--model",
            default=d.model,
            help="A built-in model (" + ", ".join(BUILTIN_MODELS) + "), a diffusers folder "
            "(SD 1.x, 2.x, SDXL, SD 3/3.5, FLUX.1, FLUX.2 Klein, Z-Image), or a hub id.",
        ),
        option(
            "--quantization",
            default=d.quantization,
            help="Weights variant: " + ", ".join(QUANTIZATIONS) + " or a recipe variant's name.",
        ),
        option(
            "--width",
            type=click.IntRange(*SIZE),
            default=None,
            help="Image width [default: the model's native size].",
        ),
        option(
            "--height",
            type=click.IntRange(*SIZE),
            default=None,
            help="Image height [default: the model's native size].",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def defaults_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Values for columns a manifest leaves out, and how a manifest is filed."""
    d = Defaults()
    opts = [
        image_options,
        option(
            "--preset",
            type=click.Choice(PRESET_NAMES),
            default=None,
            help="Scheduler, steps and quantization for rows that name none "
            "(`orchestrate presets`); flags given here and a row's columns win over it.",
        ),
        option("--priority", type=int, default=d.priority, help="Higher runs first."),
        option(
            "--min-score",
            "--min-adherence",
            "min_score",
            type=click.FloatRange(*SCORE),
            default=None,
            help="A quality gate for rows that name none (column min_score): a worker's judge "
            "scores each image from 0 to 1, and one under this is made again with the next "
            "seed [default: no gate].",
        ),
        option(
            "--quality-tries",
            type=click.IntRange(*QUALITY_TRIES),
            default=d.quality_tries,
            help="Seeds one attempt of a gated job may try (column quality_tries).",
        ),
        option(
            "--max-attempts",
            type=click.IntRange(1, 100),
            default=DEFAULT_MAX_ATTEMPTS,
            help="Tries per job before it fails.",
        ),
        option(
            "--max-total-jobs",
            type=click.IntRange(1),
            default=MAX_JOBS,
            help="Refuse a manifest that expands to more jobs than this (named at its row).",
        ),
        option(
            "--extra-column",
            "extra_columns",
            multiple=True,
            help="Declare an extra metadata column (repeatable); 'meta_*' columns need no declaration.",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def backend_options() -> list[Callable[[Any], Any]]:
    return [
        option(
            "--backend",
            type=click.Choice(BACKENDS),
            default="diffusers",
            help="diffusers (PyTorch: CPU, CUDA, MPS) or coreml (macOS only).",
        ),
        option(
            "--compute-units",
            type=click.Choice(COMPUTE_UNITS),
            default="CPU_AND_NE",
            help="Core ML compute units (with --backend coreml).",
        ),
    ]


def require_backend(backend: str) -> None:
    """Refuse at start, not per job, a backend this machine has not installed (each backend
    is the extra of its name) or cannot run."""
    require_extra(backend)
    if backend == "coreml":
        from workers.backends.coreml import check_platform

        check_platform()  # a UsageError off macOS: one sentence, exit 2


def hook_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """What to call when a batch finishes."""
    f = option(
        "--on-done",
        default=None,
        help="Shell command run when a batch finishes (summary JSON on stdin; "
        "ORCHESTRATE_BATCH_ID, _SUCCEEDED, _FAILED, _TOTAL in its environment).",
    )(f)
    return option(
        "--notify-url", default=None, help="URL to POST a JSON summary to when a batch finishes."
    )(f)


def threads_option() -> Callable[[Any], Any]:
    """``--threads``: None unless given, so that each model gets its own default
    (``workers.task.threads_for``)."""
    return option(
        "--threads",
        type=click.IntRange(1, 256),
        default=None,
        help="Torch CPU threads, recorded with each image (the count changes the pixels; "
        "`reproduce` uses the recorded one) [default: 1 for the built-in tiny models, "
        "whose operations are too small for a second thread; 2 for others].",
    )


def runtime_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How a pipeline runs here: threads, device, backend."""
    opts = [
        threads_option(),
        option(
            "--device",
            type=click.Choice(DEVICES),
            default="auto",
            help="Torch device.",
        ),
        *backend_options(),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def tuning_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Device tuning switches (``workers.tuning``), each recorded with every image."""
    opts = [
        option(
            "--compile",
            "compile_unet",
            is_flag=True,
            help="torch.compile the UNet (CUDA only; the first image of each size pays the "
            "compile).",
        ),
        option(
            "--channels-last",
            is_flag=True,
            help="The UNet in channels-last memory layout (faster convolutions on most GPUs).",
        ),
        option(
            "--low-memory",
            is_flag=True,
            help="Attention a slice at a time and the VAE in tiles (a flow model on CUDA: model "
            "CPU offload): for small Macs and GPUs, and large sizes.",
        ),
        option(
            "--fused-batches",
            is_flag=True,
            help="On the CPU, run a batch's UNet evaluations as one call: faster for small "
            "models, but each image then differs slightly from its lone run (CUDA and MPS "
            "always fuse).",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def tuning_from(kw: dict[str, Any], device: str) -> Any:
    """The tuning the flags ask for, refused at start when ``device`` cannot run it."""
    from workers.backends.diffusers import pick_device
    from workers.tuning import Tuning

    tuning = Tuning(
        compile=bool(kw.get("compile_unet")),
        channels_last=bool(kw.get("channels_last")),
        low_memory=bool(kw.get("low_memory")),
        fused_batches=bool(kw.get("fused_batches")),
    )
    if tuning.label:
        if kw.get("backend", "diffusers") != "diffusers":
            raise UsageError(
                "--compile, --channels-last and --low-memory are for --backend diffusers"
            )
        try:
            resolved = pick_device(device)
        except Exception as exc:
            raise UsageError(str(exc)) from None
        problem = tuning.problem(resolved)
        if problem is not None:
            raise UsageError(problem)
    return tuning


def judge_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Which judge scores the images of jobs with a quality gate, on this worker."""
    return option(
        "--judge",
        default=None,
        metavar="CMD",
        help="Score gated jobs' images with CMD, run as `CMD IMAGE_PATH PROMPT` (no shell); "
        "its last line on stdout is a score from 0 to 1, within 60 s "
        f"[default: '{BUILTIN}', the built-in judge of the scenes world].",
    )(f)


def judge_from(command: str | None) -> Any:
    """The judge ``--judge`` names, refused at start (not per job) if it cannot run here."""
    from workers.quality import command_problem, make_judge

    if command is not None:
        problem = command_problem(command)
        if problem is not None:
            raise UsageError(problem)
    return make_judge(command)


class BatchSize(click.ParamType):
    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        from workers.batching import parse_batch_size

        try:
            return parse_batch_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def batch_size_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """How many compatible jobs run in one pipeline call (``workers.batching``)."""
    return option(
        "--batch-size",
        type=BatchSize(),
        metavar="N|auto",
        default="1",
        help="Jobs of one model, size, steps, scheduler and guidance run together in one "
        "pipeline call, each with its own seed, image and record (on the CPU each image is "
        "byte-identical to its lone run unless --fused-batches); 'auto' sizes the batch from "
        "the device's free memory (1 on the CPU).",
    )(f)


def worker_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        option(
            "--lease",
            "lease_seconds",
            type=click.FloatRange(1, 3600),
            default=DEFAULT_LEASE_SECONDS,
            help="Seconds a claimed job stays ours without renewal.",
        ),
        runtime_options,
        tuning_options,
        judge_option,
        batch_size_option,
        option(
            "--max-jobs", type=click.IntRange(1), default=None, help="Exit after this many jobs."
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def defaults_from(kw: dict[str, Any]) -> Defaults:
    q = kw["quantization"]
    if q not in (*QUANTIZATIONS, MIXED) and not VARIANT_NAME.match(q):
        raise UsageError(
            f"--quantization must be {', '.join((*QUANTIZATIONS, MIXED))} or a recipe name, "
            f"not {q!r}"
        )
    defaults = Defaults(
        steps=kw["steps"],
        guidance_scale=kw["guidance_scale"],
        scheduler=kw["scheduler"],
        model=kw["model"],
        quantization=kw["quantization"],
        width=kw["width"],
        height=kw["height"],
        priority=kw["priority"],
        min_score=kw.get("min_score"),
        quality_tries=kw.get("quality_tries") or DEFAULT_QUALITY_TRIES,
    )
    if kw.get("preset"):
        # flags given on the command line win over the preset; their defaults do not
        ctx = click.get_current_context(silent=True)
        given = [
            name
            for name in ("steps", "scheduler", "quantization")
            if ctx is not None
            and ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
        ]
        defaults = defaults.with_preset(kw["preset"], keep=given)
    return defaults


def print_manifest_error(exc: ManifestError, limit: int = 100) -> None:
    for issue in exc.issues[:limit]:
        click.echo(f"error: {issue}", err=True)
    if len(exc.issues) > limit:
        click.echo(f"error: ... and {len(exc.issues) - limit} more", err=True)
    click.echo(f"{exc}", err=True)


def settings_from_options(output: Path, kw: dict[str, Any], **worker: Any) -> RunSettings:
    """The typed settings of the worker options in ``kw`` (``worker``: settings of the command
    itself), refusing a backend this machine cannot run, or a --judge command it does not
    have."""
    require_backend(kw["backend"])
    judge_from(kw.get("judge"))
    return RunSettings(
        worker=WorkerSettings(
            output_dir=output,
            lease_seconds=kw["lease_seconds"],
            threads=kw["threads"],
            device=kw["device"],
            max_jobs=kw["max_jobs"],
            backend=kw["backend"],
            compute_units=kw["compute_units"],
            judge=kw.get("judge"),
            batch_size=kw.get("batch_size", 1),
            tuning=tuning_from(kw, kw["device"]),
            **worker,
        ),
        notify_url=kw.get("notify_url"),
        on_done=kw.get("on_done"),
    )


def submit_manifest(state: State, manifest: Manifest, name: str, kw: dict[str, Any]) -> Any:
    defaults = defaults_from(kw)
    from workers.models.licences import licences_of

    return state.store().submit(
        manifest,
        name=name,
        defaults=asdict(defaults),
        max_attempts=kw["max_attempts"],
        licences=licences_of(s.model for s in manifest.jobs),
    )


def report_submit(result: Any, as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(asdict(result)))
        return
    where = f"batch {result.batch_id}" if result.batch_id is not None else "no new batch"
    click.echo(
        f"{where}: {result.rows} rows, {result.added} jobs added, {result.duplicates} duplicates"
    )


def configure_logging(verbose: int, service: bool = False) -> None:
    level = (
        logging.DEBUG if verbose > 1 else logging.INFO if (verbose or service) else logging.WARNING
    )
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("orchestrator").setLevel(level)
    logging.getLogger("workers").setLevel(level)


def wait_out(fn: Callable[[], T], what: str, every: float = 5.0) -> T:
    """``fn()`` for a service's start: a busy or full database (or disk) is waited out, with
    one line each time the reason changes, not a crash; Ctrl-C stops the wait (through
    ``contract.waiting.patiently``)."""
    said = [""]

    def tell(exc: BaseException, _delay: float) -> None:
        if str(exc) != said[0]:
            click.echo(f"waiting to {what}: {exc} (trying again every {every:.0f}s)", err=True)
            said[0] = str(exc)

    return waiting.patiently(
        fn, retry_on=(TransientError,), backoff=Backoff.every(every), on_failure=tell
    )


def redis_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--redis",
        "redis_url",
        envvar="ORCHESTRATE_REDIS_URL",
        show_envvar=True,
        required=True,
        help="Redis URL: redis://[user:password@]host:6379/0, rediss:// for TLS.",
    )(f)
