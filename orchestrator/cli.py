"""The ``orchestrate`` command. Each command parses, calls the library, prints.

Every option can also come from an environment variable (``--help`` names it):
``ORCHESTRATE_DB``, ``ORCHESTRATE_OUTPUT``, and ``ORCHESTRATE_<COMMAND>_<OPTION>`` for the rest.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from orchestrator import __version__
from orchestrator.config import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_OUTPUT,
    DEFAULT_THREADS,
    WorkerSettings,
)
from orchestrator.errors import ManifestError, OrchestratorError
from orchestrator.manifest import (
    QUANTIZATIONS,
    Defaults,
    Manifest,
    load_manifest,
    parse_manifest,
    single_job,
)
from workers.schedulers import SCHEDULER_NAMES

CONTEXT = {
    "auto_envvar_prefix": "ORCHESTRATE",
    "show_default": True,
    "help_option_names": ["-h", "--help"],
}


class State:
    def __init__(self, db: str | None, output: str) -> None:
        self.db = db
        self.output = Path(output).expanduser().absolute()
        self._store: Any = None

    @property
    def url(self) -> str:
        from orchestrator.database import database_url

        return database_url(self.db)

    def store(self) -> Any:
        if self._store is None:
            from orchestrator.database import open_engine
            from orchestrator.store import JobStore

            self._store = JobStore(open_engine(self.url))
        return self._store


pass_state = click.make_pass_decorator(State)


def option(*names: str, **kw: Any) -> Callable[[Any], Any]:
    kw.setdefault("show_envvar", True)
    return click.option(*names, **kw)


def defaults_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Values for columns a manifest leaves out."""
    d = Defaults()
    opts = [
        option("--steps", type=click.IntRange(1, 500), default=d.steps, help="Denoising steps."),
        option(
            "--guidance-scale",
            type=click.FloatRange(0, 50),
            default=d.guidance_scale,
            help="CFG scale.",
        ),
        option(
            "--scheduler", type=click.Choice(SCHEDULER_NAMES), default=d.scheduler, help="Sampler."
        ),
        option(
            "--model", default=d.model, help="'tiny' (built in), a diffusers folder, or a hub id."
        ),
        option(
            "--quantization",
            type=click.Choice(QUANTIZATIONS),
            default=d.quantization,
            help="Weights variant.",
        ),
        option(
            "--width",
            type=click.IntRange(64, 4096),
            default=None,
            help="Image width [default: the model's native size].",
        ),
        option(
            "--height",
            type=click.IntRange(64, 4096),
            default=None,
            help="Image height [default: the model's native size].",
        ),
        option("--priority", type=int, default=d.priority, help="Higher runs first."),
        option(
            "--max-attempts",
            type=click.IntRange(1, 100),
            default=DEFAULT_MAX_ATTEMPTS,
            help="Tries per job before it fails.",
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


def worker_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        option(
            "--lease",
            "lease_seconds",
            type=click.FloatRange(1, 3600),
            default=DEFAULT_LEASE_SECONDS,
            help="Seconds a claimed job stays ours without renewal.",
        ),
        option(
            "--threads",
            type=click.IntRange(1, 256),
            default=DEFAULT_THREADS,
            help="Torch CPU threads (fixed: the count changes the pixels).",
        ),
        option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda", "mps"]),
            default="auto",
            help="Torch device.",
        ),
        option(
            "--max-jobs", type=click.IntRange(1), default=None, help="Exit after this many jobs."
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _defaults(kw: dict[str, Any]) -> Defaults:
    return Defaults(
        steps=kw["steps"],
        guidance_scale=kw["guidance_scale"],
        scheduler=kw["scheduler"],
        model=kw["model"],
        quantization=kw["quantization"],
        width=kw["width"],
        height=kw["height"],
        priority=kw["priority"],
    )


def _print_manifest_error(exc: ManifestError, limit: int = 100) -> None:
    for issue in exc.issues[:limit]:
        click.echo(f"error: {issue}", err=True)
    if len(exc.issues) > limit:
        click.echo(f"error: ... and {len(exc.issues) - limit} more", err=True)
    click.echo(f"{exc}", err=True)


def _submit(state: State, manifest: Manifest, name: str, kw: dict[str, Any]) -> Any:
    defaults = _defaults(kw)
    return state.store().submit(
        manifest, name=name, defaults=asdict(defaults), max_attempts=kw["max_attempts"]
    )


def _report_submit(result: Any, as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(asdict(result)))
        return
    where = f"batch {result.batch_id}" if result.batch_id is not None else "no new batch"
    click.echo(
        f"{where}: {result.rows} rows, {result.added} jobs added, {result.duplicates} duplicates"
    )


def _configure_logging(verbose: int, service: bool = False) -> None:
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


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@defaults_options
@option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def submit(state: State, manifest: str, as_json: bool, **kw: Any) -> None:
    """Validate MANIFEST and load its jobs into the queue."""
    m = load_manifest(manifest, _defaults(kw), extra_columns=kw["extra_columns"])
    _report_submit(_submit(state, m, Path(manifest).name, kw), as_json)


def _run_worker(
    state: State,
    ctx: click.Context,
    settings: WorkerSettings,
    scope: Callable[[], dict[str, int]] | None,
    progress: bool,
) -> Any:
    from orchestrator.local import LocalWorker
    from orchestrator.progress import Progress

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
@pass_state
@click.pass_context
def run(ctx: click.Context, state: State, manifest: str | None, **kw: Any) -> None:
    """Submit MANIFEST (if given), then work through the queue on this machine.

    Exits 0 when every job of the manifest (or, without one, of the queue) succeeded.
    """
    _configure_logging(ctx.find_root().meta["verbose"])
    job_ids = None
    if manifest:
        m = load_manifest(manifest, _defaults(kw), extra_columns=kw["extra_columns"])
        _report_submit(_submit(state, m, Path(manifest).name, kw))
        job_ids = state.store().job_ids_for([j.fingerprint() for j in m.jobs])
    sys.exit(_work_and_report(ctx, state, kw, job_ids))


def _work_and_report(
    ctx: click.Context, state: State, kw: dict[str, Any], job_ids: list[int] | None
) -> int:
    store = state.store()
    settings = WorkerSettings(
        output_dir=state.output,
        lease_seconds=kw["lease_seconds"],
        threads=kw["threads"],
        device=kw["device"],
        max_jobs=kw["max_jobs"],
        burst=True,
    )
    scope = (lambda: store.counts_for_jobs(job_ids)) if job_ids is not None else None
    worker, _ = _run_worker(state, ctx, settings, scope, progress=True)
    counts = scope() if scope else store.counts()
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
    if worker.stopping and counts["succeeded"] != total:
        return 130
    return 0 if counts["succeeded"] == total else 1


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
    _configure_logging(ctx.find_root().meta["verbose"], service=True)
    settings = WorkerSettings(
        output_dir=state.output,
        lease_seconds=kw["lease_seconds"],
        threads=kw["threads"],
        device=kw["device"],
        max_jobs=kw["max_jobs"],
        burst=burst,
        poll_seconds=poll_seconds,
    )
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
    _configure_logging(ctx.find_root().meta["verbose"])
    if output_path:
        state.output = Path(output_path).expanduser().absolute()
    data = single_job(prompt, _defaults(kw), seed=seed, negative_prompt=negative_prompt)
    m = parse_manifest(data, "--prompt", _defaults(kw))
    _report_submit(_submit(state, m, "generate", kw))
    job_ids = state.store().job_ids_for([j.fingerprint() for j in m.jobs])
    code = _work_and_report(ctx, state, kw, job_ids)
    job = state.store().get_job(job_ids[0])
    if job["output_path"]:
        click.echo(job["output_path"])
    sys.exit(code)


@main.command()
@option("--batch", "batch_id", type=int, default=None, help="Only this batch.")
@option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (keys: batch, counts, total, timings, batches).",
)
@pass_state
def status(state: State, batch_id: int | None, as_json: bool) -> None:
    """Counts by status, batch progress and stage timings."""
    from orchestrator.status import overview, render_text

    data = overview(state.store(), batch_id)
    click.echo(json.dumps(data, indent=2) if as_json else render_text(data))


@main.group()
def jobs() -> None:
    """List, show, retry and cancel jobs."""


def _short(text: str, n: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


@jobs.command("list")
@option("--batch", "batch_id", type=int, default=None, help="Only this batch.")
@option(
    "--status",
    type=click.Choice(["pending", "queued", "running", "succeeded", "failed", "cancelled"]),
    default=None,
)
@option("--limit", type=click.IntRange(1), default=50)
@option("--json", "as_json", is_flag=True)
@pass_state
def jobs_list(
    state: State, batch_id: int | None, status: str | None, limit: int, as_json: bool
) -> None:
    """List jobs."""
    rows = state.store().list_jobs(batch_id=batch_id, status=status, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    click.echo(
        f"{'id':>6} {'batch':>5} {'status':<10} {'try':>3} {'seed':>10} {'steps':>5} {'scheduler':<16} prompt"
    )
    for r in rows:
        click.echo(
            f"{r['id']:>6} {r['batch_id']:>5} {r['status']:<10} {r['attempts']:>3} {r['seed']:>10} "
            f"{r['steps']:>5} {r['scheduler']:<16} {_short(r['prompt'], 50)}"
        )
        if r["status"] == "failed" and r["last_error"]:
            click.echo(f"{'':>6} error: {_short(r['last_error'], 100)}")


@jobs.command("show")
@click.argument("job_id", type=int)
@option("--json", "as_json", is_flag=True)
@pass_state
def jobs_show(state: State, job_id: int, as_json: bool) -> None:
    """Show one job with its attempts and stage timings."""
    job = state.store().get_job(job_id)
    if as_json:
        click.echo(json.dumps(job, indent=2, ensure_ascii=False))
        return
    attempts = job.pop("attempt_rows")
    for k, v in job.items():
        click.echo(f"{k:>16}: {v}")
    for a in attempts:
        timing = ", ".join(
            f"{k[:-2]} {a[k]:.3f}s"
            for k in ("load_s", "text_encode_s", "denoise_s", "decode_s", "encode_s", "total_s")
            if a[k] is not None
        )
        click.echo(
            f"attempt {a['number']}: {a['status']} on {a['worker']} ({a['backend'] or '-'} {a['device'] or ''}) {timing}"
        )
        if a["error"]:
            click.echo(f"    error: {a['error']}")


@jobs.command("retry")
@click.argument("job_ids", type=int, nargs=-1)
@option(
    "--batch",
    "batch_id",
    type=int,
    default=None,
    help="Every failed or cancelled job of this batch.",
)
@option("--failed", "all_failed", is_flag=True, help="Every failed job.")
@pass_state
def jobs_retry(
    state: State, job_ids: Sequence[int], batch_id: int | None, all_failed: bool
) -> None:
    """Put failed or cancelled jobs back in the queue."""
    store = state.store()
    if all_failed:
        ids = [r["id"] for r in store.list_jobs(status="failed", batch_id=batch_id, limit=10**9)]
        n = store.retry(ids) if ids else 0
    else:
        n = store.retry(list(job_ids), batch_id=batch_id)
    click.echo(f"{n} jobs back in the queue")


@jobs.command("cancel")
@click.argument("job_ids", type=int, nargs=-1)
@option("--batch", "batch_id", type=int, default=None, help="Every unfinished job of this batch.")
@pass_state
def jobs_cancel(state: State, job_ids: Sequence[int], batch_id: int | None) -> None:
    """Cancel pending or running jobs (a running one stops at its worker's next lease renewal)."""
    n = state.store().cancel(list(job_ids), batch_id=batch_id)
    click.echo(f"{n} jobs cancelled")


@main.group()
def db() -> None:
    """The database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_state
def db_upgrade(state: State, revision: str) -> None:
    """Migrate the database to REVISION (default: the newest)."""
    from orchestrator.database import upgrade

    click.echo(f"database at revision {upgrade(state.url, revision)}")


@db.command("downgrade")
@click.argument("revision")
@pass_state
def db_downgrade(state: State, revision: str) -> None:
    """Migrate the database back to REVISION ('base' drops everything)."""
    from orchestrator.database import current_revision, downgrade, make_engine

    downgrade(state.url, revision)
    click.echo(f"database at revision {current_revision(make_engine(state.url)) or 'base'}")


@db.command("current")
@pass_state
def db_current(state: State) -> None:
    """Print the schema revision of the database and the newest one."""
    from orchestrator.database import current_revision, head_revision, make_engine

    click.echo(
        f"current: {current_revision(make_engine(state.url)) or 'none'}, head: {head_revision()}"
    )


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point: library errors become clean messages and exit codes, never tracebacks."""
    try:
        main.main(args=argv, prog_name="orchestrate", standalone_mode=False)
    except ManifestError as exc:
        _print_manifest_error(exc)
        sys.exit(exc.exit_code)
    except OrchestratorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    cli()
