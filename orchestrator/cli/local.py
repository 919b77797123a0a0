"""Commands of the single-machine path: submit, run, work, generate."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from contract.errors import OrchestratorError, UsageError
from contract.limits import SEED
from contract.status import JobStatus
from orchestrator.cli.common import (
    State,
    claim_output,
    configure_logging,
    defaults_from,
    defaults_options,
    hook_options,
    image_options,
    judge_from,
    judge_option,
    main,
    option,
    pass_state,
    report_submit,
    require_backend,
    runtime_options,
    settings_from_options,
    submit_manifest,
    tuning_from,
    tuning_options,
    wait_out,
    worker_options,
)
from orchestrator.manifest import Defaults, load_manifest
from workers.quality import fmt_score

if TYPE_CHECKING:
    from orchestrator.run import RunReport
    from orchestrator.store import JobStore


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@defaults_options
@option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@option(
    "--skip-model-check",
    is_flag=True,
    help="Submit even if a model that names a local folder is not on this machine (for "
    "workers on machines that have it); a warning names it.",
)
@pass_state
def submit(state: State, manifest: str, as_json: bool, skip_model_check: bool, **kw: Any) -> None:
    """Validate MANIFEST and load its jobs into the queue.

    A model path that is not on this machine is refused at its line (--skip-model-check
    submits it anyway); prompts for the built-in tiny model outside the world it draws are
    named in a warning.
    """
    from orchestrator.preflight import refuse_missing_folders

    defaults = defaults_from(kw)
    m = load_manifest(
        manifest,
        defaults,
        extra_columns=kw["extra_columns"],
        max_jobs=kw["max_total_jobs"],
    )
    if not skip_model_check:
        refuse_missing_folders(m, defaults.model)
    report_submit(submit_manifest(state, m, Path(manifest).name, kw), as_json)
    warn_missing_local_models(m)
    warn_outside_tiny_world(m)
    warn_restrictive_licences(m)


def warn_missing_local_models(manifest: Any) -> None:
    """A warning, not an error: the manifest may be meant for workers on another machine."""
    from orchestrator.preflight import manifest_models, missing_local_paths

    for model, n in missing_local_paths(manifest_models(manifest.jobs)):
        click.echo(
            f"warning: model {model!r} ({n} job{'' if n == 1 else 's'}) is not a folder on this "
            "machine; a worker that runs these jobs needs it",
            err=True,
        )


def warn_restrictive_licences(manifest: Any) -> None:
    """A warning per model whose licence limits what its images may be used for (FLUX.1
    [dev]: not to train a competing model), once per batch."""
    from collections import Counter

    from workers.models.licences import licence_of

    for model, n in sorted(Counter(s.model for s in manifest.jobs).items()):
        licence = licence_of(model)
        if licence.restriction:
            click.echo(
                f"warning: model {model!r} ({n} job{'' if n == 1 else 's'}) is under the "
                f"{licence.name}: its images are {licence.restriction}"
                + (f" ({licence.url})" if licence.url else ""),
                err=True,
            )


def warn_outside_tiny_world(manifest: Any) -> None:
    """A warning, not an error: the tiny model draws any prompt, but was trained on one world."""
    from orchestrator.preflight import tiny_world_warning

    warning = tiny_world_warning(manifest)
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False), required=False)
@defaults_options
@worker_options
@hook_options
@option(
    "--skip-model-check",
    is_flag=True,
    help="Start even if some jobs' models cannot be loaded here (those jobs then fail).",
)
@pass_state
@click.pass_context
def run(
    ctx: click.Context, state: State, manifest: str | None, skip_model_check: bool, **kw: Any
) -> None:
    """Submit MANIFEST (if given), then work through the queue on this machine.

    First checks that every model of the work can be loaded here (without loading it): a
    missing folder, or a hub id not cached on an offline machine, stops the run before it
    starts. Exits 0 when every job of the manifest (or, without one, of the queue) succeeded.
    """
    from orchestrator.run import ModelsMissing, check_models_here, run_manifest

    configure_logging(ctx.find_root().meta["verbose"])
    m = None
    if manifest:
        m = load_manifest(
            manifest,
            defaults_from(kw),
            extra_columns=kw["extra_columns"],
            max_jobs=kw["max_total_jobs"],
        )
    require_backend(kw["backend"])
    judge_from(kw["judge"])  # a --judge that cannot run here: refused before anything is submitted
    if not skip_model_check:
        try:
            warnings = check_models_here(
                state.store(),
                m,
                device=kw["device"],
                backend=kw["backend"],
                low_memory=bool(kw.get("low_memory")),
            )
            for line in warnings:
                click.echo(f"warning: {line}", err=True)
        except ModelsMissing as exc:
            for p in exc.problems:
                click.echo(f"error: {p}", err=True)
            raise
    claim_output(state)
    submitted = None
    if manifest and m is not None:
        submitted = submit_manifest(state, m, Path(manifest).name, kw)
        report_submit(submitted)
        warn_outside_tiny_world(m)
        warn_restrictive_licences(m)
    settings = settings_from_options(state.output, kw, burst=True)
    report = run_manifest(state.store(), m, settings, submitted=submitted, say=_say)
    report_run(state.store(), report)
    sys.exit(report.exit_code())


def _say(line: str) -> None:
    click.echo(line, err=True)


def report_run(store: JobStore, report: RunReport) -> None:
    """How a run ended, in words: counts on stdout, then on stderr what to do about failed,
    paused or unpublished jobs."""
    counts = report.counts
    click.echo(
        f"{counts[JobStatus.SUCCEEDED]}/{report.total} succeeded, {counts[JobStatus.FAILED]} "
        f"failed, {counts[JobStatus.CANCELLED]} cancelled; images in {report.output}"
    )
    if counts[JobStatus.FAILED]:
        click.echo(
            "see `orchestrate jobs list --status failed`; `orchestrate jobs retry --failed` tries them again",
            err=True,
        )
    if counts[JobStatus.PENDING] and not report.stopped:
        from orchestrator.cli.control import report_paused

        report_paused(store)  # the worker stops when only paused jobs are left
    report_unpublished(report.unpublished, report.output)


def report_unpublished(u: dict[str, Any], output: Path) -> int:
    """Say which succeeded jobs' images are not in place (the folder could not be written, or
    a stop came while the disk was full), why, and what publishes them (``u``:
    ``JobStore.summarize_unpublished()``); how many."""
    from orchestrator.results import STAGING
    from orchestrator.status import unpublished_lines

    if not u["count"]:
        return 0
    n = u["count"]
    what = "1 succeeded job's image is" if n == 1 else f"{n} succeeded jobs' images are"
    click.echo(
        f"{what} not in place yet: waiting in {output / STAGING}; the next `orchestrate run` "
        "or `work`, or `orchestrate verify --repair`, publishes them once the folder can be "
        "written",
        err=True,
    )
    for line in unpublished_lines(u, time.time())[1:]:
        click.echo(line, err=True)
    return n


@main.command()
@click.option(
    "--local", is_flag=True, required=True, help="Claim jobs straight from the SQLite queue."
)
@option("--burst", is_flag=True, help="Exit when no job is left instead of waiting for more.")
@option(
    "--poll",
    "poll_seconds",
    type=click.FloatRange(0.05, 60),
    default=1.0,
    help="Seconds between looks at an empty queue.",
)
@worker_options
@pass_state
@click.pass_context
def work(
    ctx: click.Context, state: State, local: bool, burst: bool, poll_seconds: float, **kw: Any
) -> None:
    """Run a worker on this machine (several may share one database)."""
    configure_logging(ctx.find_root().meta["verbose"], service=True)
    from orchestrator.run import work_queue

    store = wait_out(state.store, "open the database")
    settings = settings_from_options(state.output, kw, burst=burst, poll_seconds=poll_seconds)
    claim_output(state)
    _worker, stats = work_queue(store, settings.worker, progress=sys.stderr.isatty(), say=_say)
    sys.exit(0 if stats.failed == 0 else 1)


@main.command()
@click.argument("prompt_text", metavar="PROMPT", required=False)
@option("--prompt", default=None, hidden=True, help="The prompt (instead of PROMPT).")
@option("--negative-prompt", default="", help="The negative prompt.")
@option(
    "--seed",
    type=click.IntRange(*SEED),
    default=None,
    help="Seed [default: derived from the prompt].",
)
@image_options
@runtime_options
@tuning_options
@judge_option
@option(
    "-o",
    "--output-path",
    default=None,
    help="A .png file to write, or a folder to write <seed>-<prompt>.png into "
    "[default: the current folder].",
)
@option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing file (without it: a .png path that exists is refused, and a "
    "folder gets <seed>-<prompt>-2.png).",
)
@click.pass_context
def generate(
    ctx: click.Context,
    prompt_text: str | None,
    prompt: str | None,
    negative_prompt: str,
    seed: int | None,
    output_path: str | None,
    overwrite: bool,
    judge: str | None,
    **kw: Any,
) -> None:
    """Make one image of PROMPT and print the path of the PNG written.

    The PNG carries the same metadata as a run's images (`orchestrate reproduce` works on
    it); no database is created or used. With --judge, the image's score is printed too
    (on stderr; `--judge builtin` for the built-in judge).
    """
    from orchestrator import generate as one
    from orchestrator.preflight import device_problem, model_problem

    configure_logging(ctx.find_root().meta["verbose"])
    if prompt_text is not None and prompt is not None:
        raise UsageError("give the prompt once: as PROMPT or as --prompt, not both")
    text = prompt_text if prompt_text is not None else prompt
    if text is None:
        raise UsageError('no prompt: orchestrate generate "a prompt" [-o PATH]')
    defaults = defaults_from({**kw, "priority": Defaults().priority})
    job = one.one_job(text, defaults, seed=seed, negative_prompt=negative_prompt)
    target = one.resolve_target(output_path, overwrite)  # a bad -o is known before any work
    require_backend(kw["backend"])
    problem = device_problem(kw["device"])
    if problem is not None:
        raise UsageError(problem)
    problem = model_problem(job["model"], job["quantization"], kw["backend"])
    if problem is not None:
        raise UsageError(f"model {job['model']!r}: {problem}")
    scorer = judge_from(judge) if judge is not None else None
    if scorer is not None:
        scorer.check(job["prompt"])  # the built-in judge's refusal, before any work

    from workers.task import PipelineCache, run_job

    cache = PipelineCache(
        backend=kw["backend"],
        device=kw["device"],
        threads=kw["threads"],
        compute_units=kw["compute_units"],
        tuning=tuning_from(kw, kw["device"]),
    )

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds like Ctrl-C: nothing half-written is left

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            out = run_job(dict(job), cache)
            score = None if scorer is None else score_png(scorer, out.png, job["prompt"])
        except OrchestratorError:
            raise
        except Exception as exc:  # the pipeline's own errors: one line, not a traceback
            raise OrchestratorError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        path = one.write_image(target, job, out.png)
    finally:
        signal.signal(signal.SIGTERM, old)
    r = out.result
    scored = (
        f", score {fmt_score(score)} ({scorer.name})"
        if scorer is not None and score is not None
        else ""
    )
    click.echo(
        f"{r['width']}x{r['height']}, seed {job['seed']}, {job['steps']} steps, "
        f"{job['scheduler']}, model {job['model']} ({r['backend']} {r['device']} {r['dtype']}) "
        f"in {r['total_s']:.2f}s{scored}",
        err=True,
    )
    click.echo(str(path))


def score_png(judge: Any, png: bytes, prompt: str) -> float:
    """A judge's score of an image given as PNG bytes."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return float(judge.score(image.convert("RGB"), prompt))
