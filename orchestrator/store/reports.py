"""What the reports of ``orchestrate status``, the dashboard and its JSON API are made of:
their windows and stages, percentiles, error grouping and a worker's liveness (the queries
themselves are ``report_reads.ReportReads``'s).

Every query reads a bounded window of recent work through an index (the last N attempts by
id, or the attempts finished in the last minutes), so each costs the same at a million jobs
as at a hundred; percentiles are computed in Python over that window.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from contract.status import AttemptStatus, JobStatus
from orchestrator.models import Job
from orchestrator.store.sql import NO_ERROR_TEXT

THROUGHPUT_WINDOW_S = 600.0
RECENT_WINDOW = 10_000
# The gallery's text and tag search reads at most this many images (newest first), each a
# LIKE: a search costs the same at a million jobs as at a hundred, and says what it read.
SEARCH_WINDOW = 50_000
PROMPT_EXCERPT = 300  # characters of a prompt a job list carries (a prompt may hold 10,000)
# Stages whose p50/p95 the reports give; denoise per step comes from denoise_s / steps.
STAGES = (
    "queue_wait_s",
    "load_s",
    "text_encode_s",
    "denoise_s",
    "denoise_per_step_s",
    "decode_s",
    "encode_s",
    "total_s",
)
FAILED_ATTEMPTS = (AttemptStatus.FAILED.value, AttemptStatus.LOST.value)
# A local lease owner is "<worker>/<claim token>": without the token, one dead worker's lost
# jobs share one error text instead of one each. The same rule in Python and in SQL.
_LEASE_TOKEN = re.compile(r"^(lease expired: worker .+)/[0-9a-f]{8}( stopped renewing it)$")
# What the gallery shows of a succeeded job.
IMAGE_COLUMNS = (
    Job.id,
    Job.batch_id,
    Job.prompt,
    Job.negative_prompt,
    Job.seed,
    Job.steps,
    Job.guidance_scale,
    Job.width,
    Job.height,
    Job.scheduler,
    Job.model,
    Job.finished_at,
    Job.output_path,
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, interpolating between closest ranks."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Count, mean, p50 and p95 of the values that are not None."""
    v = [float(x) for x in values if x is not None]
    return {
        "n": len(v),
        "mean": sum(v) / len(v) if v else None,
        "p50": percentile(v, 50),
        "p95": percentile(v, 95),
    }


def error_key(error: str | None) -> str:
    """The text failures are grouped by."""
    if not error:
        return NO_ERROR_TEXT
    return _LEASE_TOKEN.sub(r"\1\2", error)


def liveness(w: dict[str, Any], job: dict[str, Any] | None) -> dict[str, Any]:
    """What a worker's row says about its liveness, with its current job's lease.

    A local worker writes its row when its state changes, so ``last_seen`` of one busy on a
    long job is as old as the job; what it does meanwhile is renew the job's lease, so a
    lease of its that has not expired is the fresher sign of life. An RQ worker's row is
    refreshed with each heartbeat. ``holds_job``: the job is still queued or running under
    this worker (its open attempt or its lease is the worker's)."""
    busy = w["state"] in ("busy", "loading") and bool(w["current_job"])
    holds = False
    since = lease = None
    status = None
    if busy and job is not None:
        status = job["status"]
        mine = job["lease_owner"] is not None and job["lease_owner"].startswith(w["name"] + "/")
        holds = status in (JobStatus.QUEUED.value, JobStatus.RUNNING.value) and (
            mine or w["name"] in job["attempts"]
        )
        since = job["attempts"].get(w["name"])
        lease = job["lease_expires_at"] if holds and mine else None
    return {
        "busy_job": w["current_job"] if busy else None,
        "busy_since": since,
        "holds_job": holds,
        "job_status": status,
        "lease_expires_at": lease,
    }
