"""Commands of the Redis/RQ path: the coordinator on the queue host, a worker on each Mac."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from contract.errors import OrchestratorError
from contract.limits import DEVICES
from orchestrator.cli.common import (
    State,
    backend_options,
    batch_size_option,
    claim_output,
    configure_logging,
    hook_options,
    judge_from,
    judge_option,
    main,
    option,
    pass_state,
    redis_option,
    require_backend,
    threads_option,
    tuning_from,
    tuning_options,
    wait_out,
)
from orchestrator.hooks import Hooks
from orchestrator.run import stop_signals_handled


@main.command()
@redis_option
@option(
    "--until-done",
    is_flag=True,
    help="Exit when no job is pending, queued or running, not counting pending jobs of "
    "paused batches (1 if any failed or is left paused).",
)
@option(
    "--window",
    type=click.IntRange(1),
    default=None,
    help="Jobs kept in Redis at once [default: 2 per live worker, at least 2].",
)
@option(
    "--lost-after",
    type=click.FloatRange(1),
    default=5.0,
    help="Seconds a dispatched job may go unaccounted for (in no queue, no heartbeat) before it is dispatched again.",
)
@option(
    "--lease",
    "lease_ttl",
    type=click.FloatRange(3),
    default=15.0,
    help="Seconds this coordinator's lease on the database lasts unrenewed (renewed every "
    "third of it): a coordinator stopped or hung this long is taken over by the next one "
    "started, and changes nothing when it wakes.",
)
@option(
    "--job-timeout",
    type=click.IntRange(10),
    default=3600,
    help="RQ's limit on one job's run time, in seconds.",
)
@option(
    "--max-image-mb",
    type=click.FloatRange(0.01),
    default=128.0,
    help="Refuse (fail) a result whose image is larger than this, without reading it.",
)
@hook_options
@pass_state
@click.pass_context
def coordinator(
    ctx: click.Context,
    state: State,
    redis_url: str,
    until_done: bool,
    window: int | None,
    lost_after: float,
    lease_ttl: float,
    job_timeout: int,
    max_image_mb: float,
    notify_url: str | None,
    on_done: str | None,
) -> None:
    """Feed the queue to RQ workers on other machines and collect their results.

    One coordinator runs per database: a second one refuses to start, naming the first.
    With ORCHESTRATE_SECRET set (the same on every worker), payloads and results are signed.
    """
    from contract.protocol import connect_patiently, redact, secret_from_env
    from orchestrator.progress import Progress
    from orchestrator.transports.coordinator import Coordinator, CoordinatorSettings

    configure_logging(ctx.find_root().meta["verbose"], service=True)
    store = wait_out(state.store, "open the database")
    try:
        redis = connect_patiently(redis_url, say=lambda m: click.echo(f"waiting: {m}", err=True))
    except ConnectionError as exc:
        raise OrchestratorError(str(exc)) from None
    settings = CoordinatorSettings(
        output_dir=state.output,
        window=window,
        lost_after=lost_after,
        lease_ttl=lease_ttl,
        job_timeout=job_timeout,
        until_done=until_done,
        max_image_bytes=int(max_image_mb * 2**20),
        secret=secret_from_env(),
    )
    claim_output(state)
    coord = Coordinator(store, redis, settings, hooks=Hooks(notify_url, on_done))
    wait_out(coord.acquire, "take the coordinator lease")
    bar = Progress(store.count_jobs)
    coord.on_event = bar
    click.echo(
        f"coordinator on {redact(redis_url)}: {len(coord.in_flight())} jobs in flight", err=True
    )

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        click.echo(f"\n{name}: stopping (jobs in flight stay in Redis)", err=True)
        coord.request_stop()

    try:
        with stop_signals_handled(on_signal):
            code = coord.run()
    finally:
        bar.close()
    sys.exit(code)


def backend_decorators(f: Any) -> Any:
    for o in reversed(backend_options()):
        f = o(f)
    return f


@main.command()
@redis_option
@option("--burst", is_flag=True, help="Exit after --burst-idle seconds without a job.")
@option(
    "--burst-idle",
    type=click.IntRange(1),
    default=5,
    help="Seconds without a job before --burst exits.",
)
@option("--model", default=None, help="Load this model at start and prefer its jobs.")
@option("--name", default=None, help="Worker name [default: host.pid.random].")
@threads_option()
@option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    help="Torch device.",
)
@option(
    "--max-jobs",
    type=click.IntRange(1),
    default=None,
    help="Exit after this many jobs (a service manager starts a fresh one).",
)
@option(
    "--heartbeat",
    type=click.FloatRange(0.5, 60),
    default=5.0,
    help="Seconds between heartbeats during a job; after three missed, the coordinator "
    "gives the job to another worker.",
)
@backend_decorators
@tuning_options
@judge_option
@batch_size_option
@click.pass_context
def worker(
    ctx: click.Context,
    redis_url: str,
    burst: bool,
    burst_idle: int,
    model: str | None,
    name: str | None,
    threads: int | None,
    device: str,
    max_jobs: int | None,
    heartbeat: float,
    backend: str,
    compute_units: str,
    judge: str | None,
    batch_size: int | str,
    **tuning_flags: bool,
) -> None:
    """An RQ worker: takes jobs from Redis, keeps its model loaded, never opens the database."""
    from workers.rq.worker import run_worker
    from workers.task import PipelineCache

    verbose = ctx.find_root().meta["verbose"]
    configure_logging(verbose, service=True)
    require_backend(backend)
    scorer = judge_from(judge)
    try:
        run_worker(
            redis_url,
            cache=PipelineCache(
                backend=backend,
                device=device,
                threads=threads,
                compute_units=compute_units,
                judge=scorer,
                tuning=tuning_from({**tuning_flags, "backend": backend}, device),
            ),
            model=model,
            burst=burst,
            burst_idle=burst_idle,
            max_jobs=max_jobs,
            name=name,
            batch_size=batch_size,
            heartbeat_interval=heartbeat,
            heartbeat_ttl=max(1, round(3 * heartbeat)),
            logging_level="DEBUG" if verbose > 1 else "INFO",
        )
    except ConnectionError as exc:
        raise OrchestratorError(str(exc)) from None
