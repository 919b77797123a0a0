"""Commands that show the work: ``status`` (a terminal table or JSON) and ``dashboard``."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from contract.errors import UsageError
from orchestrator.cli.common import State, main, option, pass_state

DEFAULT_WATCH_SECONDS = 2.0


@main.command()
@option("--batch", "batch_id", type=int, default=None, help="Only this batch.")
@option("--json", "as_json", is_flag=True, help="Print JSON (its keys are listed above).")
@option(
    "--watch",
    type=click.FloatRange(0.1),
    is_flag=False,
    flag_value=DEFAULT_WATCH_SECONDS,
    default=None,
    metavar="[SECONDS]",
    help=f"Refresh every SECONDS ({DEFAULT_WATCH_SECONDS:g} when not given) until Ctrl-C; "
    "with --json, one JSON document per line.",
)
@option("--plain", is_flag=True, help="Plain text even on a terminal.")
@pass_state
def status(
    state: State, batch_id: int | None, as_json: bool, watch: float | None, plain: bool
) -> None:
    """Counts, progress, throughput, ETA, workers, stage timings and failures.

    \b
    --json keys (stable; times are UNIX seconds, durations seconds, null when unknown):
      generated_at    when the numbers were read
      batch           the --batch given, or null
      counts          jobs by status: pending queued running succeeded failed cancelled
      total           all jobs
      progress        done (succeeded+failed+cancelled), remaining (pending+queued+running),
                      fraction (done/total), eta_s (remaining / the recent rate)
      throughput      window_s, images (succeeded in the window), images_per_min,
                      failed_attempts (failed or lost in the window, all batches)
      timings         n and mean seconds per stage over the last 1000 succeeded attempts:
                      queue_wait_s load_s text_encode_s denoise_s decode_s encode_s
                      total_s, and peak_mem_mb
      stages          per stage (those of timings plus denoise_per_step_s): n mean p50 p95
      stages_n        how many succeeded attempts stages are over
      workers         per worker seen in 24 h: name transport host pid backend device model
                      state (loading busy idle paused, as the worker said while heard from
                      within 3 heartbeats; stale when silent longer; gone when silent 12
                      heartbeats and a minute, or stopped) reported_state (loading busy idle
                      paused stopped: what it said last) heartbeat_s relayed (false: an RQ
                      worker while no coordinator runs to relay its heartbeats; it is then at
                      most stale) current_job jobs_done jobs_failed busy_s started_at
                      last_seen s_per_image (busy_s/jobs_done), mean_s p95_s recent_images
                      (over its succeeded attempts among the last 10000),
                      recent_failed_attempts, busy_job busy_since (its running attempt's
                      start) holds_job job_status lease_expires_at (a local worker renews its
                      job's lease: a sign of life too), liveness (the phrase shown)
      batches         per batch: id name created_at paused_at (null: not paused) jobs
                      counts done remaining fraction images_per_min eta_s
      failures        failed and lost attempts by error text, most frequent first: error
                      attempts lost jobs workers last_seen job_ids (the latest five)
      slowest         the slowest recent succeeded attempts: attempt_id job_id batch_id
                      worker total_s denoise_s finished_at steps width height model prompt
      coordinator     the coordinator's lease (null if none ever ran): host pid since
                      renewed_at state (running paused stopped gone) message (why paused)
      dead_letters    count (messages the coordinator refused, all time) and recent: id at
                      source reason excerpt
      loading         batches still being submitted: id name state loader rows jobs_so_far
      paused          queue_paused_at (null while the queue runs), batches (paused ones:
                      id name paused_at pending), waiting (pending jobs held by a pause)
      quality         per batch with jobs under a quality gate: batch_id gated judged
                      passed failed_gate mean_score (of the images kept) min_score_low
                      min_score_high (the gates asked for)
      unpublished     succeeded jobs whose image is not in place yet: count, blocked (a
                      publish failed: the folder cannot be written), examples (the first
                      five blocked: id batch_id output_path error next_try_at)
    """
    from orchestrator.status import overview

    store = state.store(existing=True)
    rich = not as_json and not plain and sys.stdout.isatty()
    if batch_id is not None and all(b["id"] != batch_id for b in store.list_batches()):
        raise UsageError(f"no batch {batch_id}")
    if watch is None:
        data = overview(store, batch_id)
        if as_json:
            click.echo(json.dumps(data, indent=2))
        elif rich:
            _rich_console().print(_rich_view(data))
        else:
            click.echo(_text_view(data))
        return
    try:
        if rich:
            _watch_rich(store, batch_id, watch)
        else:
            while True:
                data = overview(store, batch_id)
                click.echo(json.dumps(data) if as_json else _text_view(data) + "\n")
                time.sleep(watch)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: not an error


def _text_view(data: dict[str, Any]) -> str:
    from orchestrator.status import render_text

    return render_text(data)


def _rich_view(data: dict[str, Any]) -> Any:
    from orchestrator.status import render_rich

    return render_rich(data)


def _rich_console() -> Any:
    from rich.console import Console

    return Console()


def _watch_rich(store: Any, batch_id: int | None, every: float) -> None:
    from rich.live import Live

    from orchestrator.status import overview

    with Live(
        _rich_view(overview(store, batch_id)),
        console=_rich_console(),
        auto_refresh=False,
        screen=False,
    ) as live:
        while True:
            time.sleep(every)
            live.update(_rich_view(overview(store, batch_id)), refresh=True)


@main.command()
@option(
    "--host",
    default="127.0.0.1",
    help="Address to listen on. Anyone who can reach it can retry and cancel jobs: "
    "keep it on localhost unless the network is yours.",
)
@option("--port", type=click.IntRange(0, 65535), default=8080, help="Port (0: any free one).")
@option(
    "--refresh",
    "refresh_s",
    type=click.FloatRange(0),
    default=5.0,
    help="Seconds between page reloads while jobs are pending or running (0: never).",
)
@pass_state
def dashboard(state: State, host: str, port: int, refresh_s: float) -> None:
    """Serve a web dashboard: progress, workers, failures (retry, cancel), images.

    Its JSON API has the same numbers: /api/overview, /api/batches,
    /api/batches/ID/jobs?status=&page=, /api/workers, /api/failures,
    /api/gallery?q=&tag=&batch=&status=&page= and /api/jobs/ID.
    """
    from orchestrator.web import serve
    from orchestrator.web.server import is_loopback

    if not is_loopback(host):
        click.echo(
            f"warning: listening on {host}: anyone who can reach it can retry and cancel jobs",
            err=True,
        )

    def ready(url: str) -> None:
        click.echo(f"dashboard on {url} (Ctrl-C stops it)")
        sys.stdout.flush()

    serve(state.store(existing=True), host, port, refresh_s=refresh_s, on_ready=ready)
