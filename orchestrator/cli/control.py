"""Commands that steer the queue: pause, resume, and a waiting job's priority."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from orchestrator.cli.common import State, main, option, pass_state
from orchestrator.cli.jobs import jobs


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _waiting_line(store: object) -> str:
    paused = store.read_pauses()  # type: ignore[attr-defined]
    parts = []
    if paused["queue_paused_at"] is not None:
        parts.append("the queue is paused")
    if paused["batches"]:
        ids = ", ".join(str(b["id"]) for b in paused["batches"])
        parts.append(f"paused batches: {ids}")
    if not parts:
        return "nothing is paused"
    return f"{'; '.join(parts)} ({_jobs(paused['waiting'])} waiting)"


@main.command()
@option("--batch", "batch_id", type=int, default=None, help="Only this batch.")
@pass_state
def pause(state: State, batch_id: int | None) -> None:
    """Pause a batch, or (without --batch) the whole queue.

    Workers finish the job they are on and take no new one of it; the coordinator
    dispatches none and takes back the ones waiting in Redis that no worker has started.
    `orchestrate resume` undoes it; `run` and `coordinator --until-done` stop when only
    paused jobs are left.
    """
    store = state.store(existing=True)
    changed = store.pause(batch_id)
    paused = store.read_pauses()
    if batch_id is None:
        if not changed:
            click.echo("the queue was already paused")
            return
        click.echo(
            f"the queue is paused: no new job starts ({_jobs(paused['waiting'])} waiting); "
            "`orchestrate resume` goes on"
        )
        return
    if not changed:
        click.echo(f"batch {batch_id} was already paused")
        return
    waiting = next((b["pending"] for b in paused["batches"] if b["id"] == batch_id), 0)
    click.echo(
        f"batch {batch_id} is paused: no new job of it starts ({_jobs(waiting)} waiting); "
        f"`orchestrate resume --batch {batch_id}` goes on"
    )


@main.command()
@option("--batch", "batch_id", type=int, default=None, help="Only this batch.")
@pass_state
def resume(state: State, batch_id: int | None) -> None:
    """Resume a paused batch, or (without --batch) the whole queue.

    Resuming the queue leaves batches paused one by one as they are.
    """
    store = state.store(existing=True)
    changed = store.resume(batch_id)
    paused = store.read_pauses()
    what = "the queue" if batch_id is None else f"batch {batch_id}"
    line = f"{what} {'is running again' if changed else 'was not paused'}"
    if batch_id is None and paused["batches"]:
        ids = ", ".join(str(b["id"]) for b in paused["batches"])
        line += f" (batches still paused: {ids}; `orchestrate resume --batch ID`)"
    elif batch_id is not None and paused["queue_paused_at"] is not None:
        line += " (but the whole queue is paused: `orchestrate resume`)"
    click.echo(line)


@jobs.command("priority", context_settings={"ignore_unknown_options": True})
@click.argument("job_ids", type=int, nargs=-1)
@click.argument("value", type=int)
@option("--batch", "batch_id", type=int, default=None, help="Every pending job of this batch.")
@option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def jobs_priority(
    state: State, job_ids: Sequence[int], value: int, batch_id: int | None, as_json: bool
) -> None:
    """Give pending jobs priority VALUE (higher runs first; negative is fine).

    \b
    orchestrate jobs priority 12 13 5       jobs 12 and 13 get priority 5
    orchestrate jobs priority --batch 3 -1  every pending job of batch 3 gets -1

    Only pending jobs change: queued (already in Redis), running and finished ones keep
    theirs. Prints how many changed.
    """
    n = state.store(existing=True).set_priority(value, list(job_ids), batch_id=batch_id)
    if as_json:
        click.echo(json.dumps({"changed": n, "priority": value}))
        return
    click.echo(f"{_jobs(n)} now at priority {value} (only pending jobs change)")


def report_paused(store: Any) -> None:
    """Say (on stderr) which paused jobs a run left waiting, and how to go on."""
    paused = store.read_pauses()
    if not paused["waiting"]:
        return
    if paused["queue_paused_at"] is not None:
        where, how = "the queue is paused", "`orchestrate resume`"
    else:
        ids = [b["id"] for b in paused["batches"] if b["pending"]]
        where = f"paused batch{'es' if len(ids) != 1 else ''} {', '.join(map(str, ids))}"
        how = " / ".join(f"`orchestrate resume --batch {i}`" for i in ids[:3])
    click.echo(
        f"{_jobs(paused['waiting'])} left waiting: {where}; {how}, then run again",
        err=True,
    )
