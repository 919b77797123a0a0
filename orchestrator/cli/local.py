"""Commands of the single-machine path: submit, run, work, generate."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from orchestrator.cli import main
from orchestrator.cli.common import (
    State,
    configure_logging,
    defaults_from,
    defaults_options,
    hook_options,
    option,
    pass_state,
    patiently,
    report_submit,
    require_backend,
    submit_manifest,
    worker_options,
)
from orchestrator.config import (
    WorkerSettings,
)
from orchestrator.hooks import Hooks, batch_summary
from orchestrator.manifest import (
    load_manifest,
    parse_manifest,
    single_job,
)


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@defaults_options
@option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def submit(state: State, manifest: str, as_json: bool, **kw: Any) -> None:
    """Validate MANIFEST and load its jobs into the queue."""
    m = load_manifest(
        manifest,
        defaults_from(kw),
        extra_columns=kw["extra_columns"],
        max_jobs=kw["max_total_jobs"],
    )
    report_submit(submit_manifest(state, m, Path(manifest).name, kw), as_json)


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
@pass_state
@click.pass_context
def run(ctx: click.Context, state: State, manifest: str | None, **kw: Any) -> None:
    """Submit MANIFEST (if given), then work through the queue on this machine.

    Exits 0 when every job of the manifest (or, without one, of the queue) succeeded.
    """
    configure_logging(ctx.find_root().meta["verbose"])
    scope = None
    if manifest:
        m = load_manifest(
            manifest,
            defaults_from(kw),
            extra_columns=kw["extra_columns"],
            max_jobs=kw["max_total_jobs"],
        )
        result = submit_manifest(state, m, Path(manifest).name, kw)
        report_submit(result)
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
    """Settings from the shared worker options (refusing a backend this machine cannot run)."""
    require_backend(kw["backend"])
    return WorkerSettings(
        output_dir=state.output,
        lease_seconds=kw["lease_seconds"],
        threads=kw["threads"],
        device=kw["device"],
        max_jobs=kw["max_jobs"],
        backend=kw["backend"],
        compute_units=kw["compute_units"],
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
        f"{counts['succeeded']}/{total} succeeded, {counts['failed']} failed, "
        f"{counts['cancelled']} cancelled; images in {state.output}"
    )
    if counts["failed"]:
        click.echo(
            "see `orchestrate jobs list --status failed`; `orchestrate jobs retry --failed` tries them again",
            err=True,
        )
    finished = counts["succeeded"] + counts["cancelled"]  # a job the user cancelled is no failure
    if worker.stopping and finished != total:
        return 130
    return 0 if finished == total and counts["failed"] == 0 else 1


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
    _worker, stats = _run_worker(state, ctx, settings, None, progress=sys.stderr.isatty())
    sys.exit(0 if stats.failed == 0 else 1)


@main.command()
@option("--prompt", required=True, help="The prompt.")
@option("--negative-prompt", default="", help="The negative prompt.")
@option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=None,
    help="Seed [default: derived from the prompt].",
)
@defaults_options
@worker_options
@option(
    "--output-path",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the image [default: --output].",
)
@pass_state
@click.pass_context
def generate(
    ctx: click.Context,
    state: State,
    prompt: str,
    negative_prompt: str,
    seed: int | None,
    output_path: str | None,
    **kw: Any,
) -> None:
    """Make one image without a manifest (the same path as a one-row manifest)."""
    configure_logging(ctx.find_root().meta["verbose"])
    if output_path:
        state.output = Path(output_path).expanduser().absolute()
    data = single_job(prompt, defaults_from(kw), seed=seed, negative_prompt=negative_prompt)
    m = parse_manifest(data, "--prompt", defaults_from(kw))
    result = submit_manifest(state, m, "generate", kw)
    report_submit(result)
    job_ids = state.store().job_ids_for([j.fingerprint() for j in m.jobs])
    code = _work_and_report(ctx, state, kw, lambda: state.store().counts_for_jobs(job_ids))
    job = state.store().get_job(job_ids[0])
    if job["output_path"]:
        click.echo(job["output_path"])
    sys.exit(code)
