"""Commands on jobs and on the database schema."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

from contract.job import GATE_FIELDS, QUALITY_RESULT_FIELDS
from contract.limits import SCORE
from contract.status import VISIBLE_STATUSES, JobStatus
from orchestrator.cli.common import (
    State,
    main,
    option,
    pass_state,
)
from workers.quality import fmt_score


@main.group()
def jobs() -> None:
    """List, show, retry and cancel jobs, and change their priority."""


# The job's columns that hold UNIX times, shown as local date and time.
_TIMES = (
    "created_at",
    "started_at",
    "finished_at",
    "not_before",
    "lease_expires_at",
    "published_at",
)


def _when(ts: float | None) -> str:
    import datetime

    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str, n: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


@jobs.command("list")
@option("--batch", "batch_id", type=int, default=None, help="Only this batch.")
@option(
    "--status",
    type=click.Choice([s.value for s in VISIBLE_STATUSES]),
    default=None,
)
@option(
    "--below",
    type=click.FloatRange(*SCORE),
    default=None,
    metavar="SCORE",
    help="Only jobs with a quality gate whose kept image scored under SCORE.",
)
@option("--limit", type=click.IntRange(1), default=50)
@option("--json", "as_json", is_flag=True)
@pass_state
def jobs_list(
    state: State,
    batch_id: int | None,
    status: str | None,
    below: float | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs (score: what the judge of a job's quality gate gave its image)."""
    rows = state.store(existing=True).list_jobs(
        batch_id=batch_id, status=status, below=below, limit=limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    if more:
        click.echo(f"(the first {limit} jobs; there are more: --limit N shows more)", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    # The score column only where some job listed has a quality gate.
    gated = any(r["min_score"] is not None for r in rows)
    click.echo(
        f"{'id':>6} {'batch':>5} {'status':<10} {'try':>3} {'seed':>10} {'steps':>5} "
        f"{'scheduler':<16} " + (f"{'score':>5} " if gated else "") + "prompt"
    )
    for r in rows:
        score = "-" if r["score"] is None else fmt_score(r["score"])
        click.echo(
            f"{r['id']:>6} {r['batch_id']:>5} {r['status']:<10} {r['attempts']:>3} {r['seed']:>10} "
            f"{r['steps']:>5} {r['scheduler']:<16} "
            + (f"{score:>5} " if gated else "")
            + _short(r["prompt"], 50)
        )
        if r["status"] == JobStatus.FAILED and r["last_error"]:
            click.echo(f"{'':>6} error: {_short(r['last_error'], 100)}")


@jobs.command("show")
@click.argument("job_id", type=int)
@option("--json", "as_json", is_flag=True)
@pass_state
def jobs_show(state: State, job_id: int, as_json: bool) -> None:
    """Show one job with its attempts and stage timings."""
    job = state.store(existing=True).get_job(job_id)
    for a in job["attempt_rows"]:
        a["scores"] = json.loads(a.pop("scores_json") or "null")  # [[seed, score], ...]
    if as_json:
        click.echo(json.dumps(job, indent=2, ensure_ascii=False))
        return
    attempts = job.pop("attempt_rows")
    if job["min_score"] is None:  # no quality gate: nothing of one to show
        for k in (*GATE_FIELDS, *QUALITY_RESULT_FIELDS):
            job.pop(k)
    from orchestrator.web.app import ran_as  # the dashboard's job page says the same
    from workers.models.licences import from_record

    ran = ran_as(job["quantization"], attempts)
    licence = from_record(job.pop("licence"))
    for k, v in job.items():
        click.echo(f"{k:>16}: {_when(v) if k in _TIMES and v is not None else v}")
        if k == "model":  # what its images may be used for, as its batch recorded it
            link = f", {licence.url}" if licence.url else ""
            click.echo(f"{'licence':>16}: {licence.short()} ({licence.source}{link})")
        if k == "quantization":  # what was asked; then what ran (fp16 on a CPU runs in fp32)
            click.echo(f"{'ran as':>16}: {ran['text'] if ran else 'not run yet'}")
    for a in attempts:
        timing = ", ".join(
            f"{k[:-2]} {a[k]:.3f}s"
            for k in ("load_s", "text_encode_s", "denoise_s", "decode_s", "encode_s", "total_s")
            if a[k] is not None
        )
        click.echo(
            f"attempt {a['number']}: {a['status']} on {a['worker']} ({a['backend'] or '-'} "
            f"{a['device'] or ''}{' ' + a['dtype'] if a['dtype'] else ''}) from "
            f"{_when(a['started_at'])} to {_when(a['finished_at'])} {timing}"
        )
        if a["scores"]:
            tried = ", ".join(f"{seed} {fmt_score(score)}" for seed, score in a["scores"])
            click.echo(f"    seeds tried (score): {tried}")
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
    store = state.store(existing=True)
    if all_failed:
        # By condition, in short transactions: no list of ids (SQLite caps a statement's
        # variables at 32,766 in many builds), no long write lock.
        n = store.retry(job_ids, batch_id=batch_id, statuses=[JobStatus.FAILED], everything=True)
    else:
        n = store.retry(list(job_ids), batch_id=batch_id)
    click.echo(f"{n} jobs back in the queue")


@jobs.command("cancel")
@click.argument("job_ids", type=int, nargs=-1)
@option("--batch", "batch_id", type=int, default=None, help="Every unfinished job of this batch.")
@pass_state
def jobs_cancel(state: State, job_ids: Sequence[int], batch_id: int | None) -> None:
    """Cancel pending or running jobs (a running one stops at its worker's next lease renewal)."""
    n = state.store(existing=True).cancel(list(job_ids), batch_id=batch_id)
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


@main.command("verify")
@option(
    "--repair",
    is_flag=True,
    help="Mend what is wrong: publish committed results, make missing or damaged images "
    "again, move orphans aside, remove stale staged files, recover stranded leases.",
)
@option(
    "--adopt",
    is_flag=True,
    help="With --repair: also mend a folder that records no owner and holds none of the "
    "images (it is made this database's, and every image is made again).",
)
@option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_state
def verify_cmd(state: State, repair: bool, adopt: bool, as_json: bool) -> None:
    """Check every succeeded job's image (there, whole, its recorded sha256) and look for
    orphan files, unpublished results, stranded leases and half-submitted batches.

    Files are compared by identity, not by path spelling; --repair deletes no image (orphans
    and damaged ones are moved into <output>/.orphaned/) and refuses a folder that is not
    the one the images were written to.

    Exits 0 when all is well (after --repair: when all is well now), 1 when not.
    """
    from orchestrator.verify import verify

    report = verify(state.store(existing=True), state.output, repair=repair, adopt=adopt)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        for line in report.lines():
            click.echo(line)
    sys.exit(0 if report.clean else 1)
