"""Commands of the single-machine path: submit, run, work, generate."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    patiently,
    report_submit,
    require_backend,
    runtime_options,
    submit_manifest,
    tuning_from,
    tuning_options,
    worker_options,
)
from orchestrator.config import (
    WorkerSettings,
)
from orchestrator.hooks import Hooks, batch_summary
from orchestrator.manifest import Defaults, load_manifest
from workers.quality import fmt_score


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


def warn_missing_local_models(manifest: Any) -> None:
    """A warning, not an error: the manifest may be meant for workers on another machine."""
    from orchestrator.preflight import manifest_models, missing_local_paths

    for model, n in missing_local_paths(manifest_models(manifest.jobs)):
        click.echo(
            f"warning: model {model!r} ({n} job{'' if n == 1 else 's'}) is not a folder on this "
            "machine; a worker that runs these jobs needs it",
            err=True,
        )


def warn_outside_tiny_world(manifest: Any) -> None:
    """A warning, not an error: the tiny model draws any prompt, but was trained on one world."""
    from orchestrator.preflight import tiny_world_warning

    warning = tiny_world_warning(manifest)
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)


def check_models_here(state: State, kw: dict[str, Any], manifest: Any | None) -> None:
    """Refuse to start a run whose models this machine cannot load: every distinct model of
    the manifest (before it is submitted) and of the jobs already waiting, which a run works
    through too, with job counts, their batches and the way out."""
    from orchestrator.preflight import (
        check_models,
        device_problem,
        manifest_models,
        pending_by_batch,
        refusal,
    )

    problem = device_problem(kw["device"])
    if problem is not None:
        raise UsageError(problem)
    waiting = pending_by_batch(state.store())
    counts = {key: sum(w.jobs for w in batches) for key, batches in waiting.items()}
    if manifest is not None:
        # max, not sum: re-running a manifest finds its own jobs already waiting
        for key, n in manifest_models(manifest.jobs).items():
            counts[key] = max(counts.get(key, 0), n)
    problems = check_models(counts, kw["backend"], waiting)
    if not problems:
        return
    for p in problems:
        click.echo(f"error: {p}", err=True)
    raise UsageError(refusal(problems, submitting=manifest is not None))


def _run_worker(
    state: State,
    ctx: click.Context,
    settings: WorkerSettings,
    scope: Callable[[], dict[str, int]] | None,
    progress: bool,
) -> Any:
    from orchestrator.progress import Progress
    from orchestrator.transports.local import LocalWorker

    store = state.store()
    bar = Progress(scope or store.counts) if progress else None
    worker = LocalWorker(store, settings, on_event=bar)

    def on_signal(signum: int, _frame: Any) -> None:
        if worker.stopping:
            click.echo("\nreleasing the current job and stopping now", err=True)
        elif worker.paused:
            click.echo(
                f"\n{signal.Signals(signum).name}: stopping now; paused ({worker.paused}), so a "
                "job whose image cannot be saved is given back",
                err=True,
            )
        else:
            click.echo(
                f"\n{signal.Signals(signum).name}: finishing the current job, then stopping "
                "(again to release it now)",
                err=True,
            )
        worker.request_stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stats = worker.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if bar is not None:
            bar.close()
    return worker, stats


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
    configure_logging(ctx.find_root().meta["verbose"])
    scope = None
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
        check_models_here(state, kw, m)
    claim_output(state)
    if manifest and m is not None:
        result = submit_manifest(state, m, Path(manifest).name, kw)
        report_submit(result)
        warn_outside_tiny_world(m)
        scope = manifest_scope(state.store(), m, result)
    sys.exit(_work_and_report(ctx, state, kw, scope))


def manifest_scope(store: Any, manifest: Any, result: Any) -> Callable[[], dict[str, int]]:
    """Counts of a manifest's jobs. All of them new: its batch's trigger-kept counts (as
    cheap at a million jobs as at ten); some already known: counted by id, at most every
    few seconds (a million ids take seconds to count)."""
    if result.duplicates == 0 and result.batch_id is not None:
        return lambda: store.counts(result.batch_id)
    job_ids = store.job_ids_for([j.fingerprint() for j in manifest.jobs])
    return throttled(lambda: store.counts_for_jobs(job_ids))


def throttled(fn: Callable[[], dict[str, int]], share: float = 0.1) -> Callable[[], dict[str, int]]:
    """``fn``, called again only once ``1 / share`` times its last duration (and a second)
    has passed; in between, its last value."""
    last: dict[str, Any] = {"at": -1e9, "value": None, "cost": 0.0}

    def call() -> dict[str, int]:
        now = time.monotonic()
        if last["value"] is None or now - last["at"] >= max(1.0, last["cost"] / share):
            value = fn()
            last.update(at=time.monotonic(), value=value, cost=time.monotonic() - now)
        return dict(last["value"])

    call.__wrapped__ = fn  # type: ignore[attr-defined]  # the unthrottled count, for the summary
    return call


def worker_settings(state: State, kw: dict[str, Any], **extra: Any) -> WorkerSettings:
    """Settings from the shared worker options (refusing a backend this machine cannot run,
    or a --judge command it does not have)."""
    require_backend(kw["backend"])
    judge_from(kw.get("judge"))
    return WorkerSettings(
        output_dir=state.output,
        lease_seconds=kw["lease_seconds"],
        threads=kw["threads"],
        device=kw["device"],
        max_jobs=kw["max_jobs"],
        backend=kw["backend"],
        compute_units=kw["compute_units"],
        judge=kw.get("judge"),
        batch_size=kw.get("batch_size", 1),
        tuning=tuning_from(kw, kw["device"]),
        **extra,
    )


def _work_and_report(
    ctx: click.Context,
    state: State,
    kw: dict[str, Any],
    scope: Callable[[], dict[str, int]] | None,
) -> int:
    store = state.store()
    settings = worker_settings(state, kw, burst=True)
    active_before = store.active_batches()
    worker, _ = _run_worker(state, ctx, settings, scope, progress=True)
    hooks = Hooks(kw.get("notify_url"), kw.get("on_done"))
    if hooks:
        for batch_id in sorted(active_before - store.active_batches()):
            hooks.batch_done(batch_summary(store, batch_id))
    counts = (getattr(scope, "__wrapped__", scope) or store.counts)()
    total = sum(counts.values())
    click.echo(
        f"{counts[JobStatus.SUCCEEDED]}/{total} succeeded, {counts[JobStatus.FAILED]} failed, "
        f"{counts[JobStatus.CANCELLED]} cancelled; images in {state.output}"
    )
    if counts[JobStatus.FAILED]:
        click.echo(
            "see `orchestrate jobs list --status failed`; `orchestrate jobs retry --failed` tries them again",
            err=True,
        )
    if counts[JobStatus.PENDING] and not worker.stopping:
        from orchestrator.cli.control import report_paused

        report_paused(store)  # the worker stops when only paused jobs are left
    unpublished = report_unpublished(store, state.output)
    finished = (
        counts[JobStatus.SUCCEEDED] + counts[JobStatus.CANCELLED]
    )  # a job the user cancelled is no failure
    if worker.stopping and (finished != total or unpublished):
        return 130
    return 0 if finished == total and counts[JobStatus.FAILED] == 0 and not unpublished else 1


def report_unpublished(store: Any, output: Path) -> int:
    """Say which succeeded jobs' images are not in place (the folder could not be written, or
    a stop came while the disk was full), why, and what publishes them; how many."""
    from orchestrator.results import STAGING
    from orchestrator.status import unpublished_lines

    u = store.unpublished_summary()
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
    patiently(state.store, "open the database")
    settings = worker_settings(state, kw, burst=burst, poll_seconds=poll_seconds)
    claim_output(state)
    _worker, stats = _run_worker(state, ctx, settings, None, progress=sys.stderr.isatty())
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
