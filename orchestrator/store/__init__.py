"""JobStore: every SQL statement of the orchestrator, so transaction rules live in one place.

One class, written in parts by concept: ``jobs`` (submission, queries, user actions),
``leases`` (a job's lifecycle under a lease, for local workers and the Redis dispatcher),
``fleet`` (workers, the coordinator's lease, dead letters), ``reports`` (status and the
dashboard), ``integrity`` (what ``verify`` checks and mends) and ``control`` (pause, resume,
priority changes).
"""

from __future__ import annotations

from orchestrator.store.base import (
    JOB_PAYLOAD_COLUMNS,
    RESULT_COLUMNS,
    TIMING_COLUMNS,
    Claim,
    SubmitResult,
    WorkerIdentity,
    backoff_seconds,
    chunks,
)
from orchestrator.store.control import ControlMixin
from orchestrator.store.fleet import FleetMixin
from orchestrator.store.integrity import IntegrityMixin
from orchestrator.store.jobs import JobsMixin
from orchestrator.store.leases import LeasesMixin
from orchestrator.store.reports import ReportsMixin

__all__ = [
    "JOB_PAYLOAD_COLUMNS",
    "RESULT_COLUMNS",
    "TIMING_COLUMNS",
    "Claim",
    "JobStore",
    "SubmitResult",
    "WorkerIdentity",
    "backoff_seconds",
    "chunks",
]


class JobStore(JobsMixin, LeasesMixin, FleetMixin, ReportsMixin, IntegrityMixin, ControlMixin):
    """The job database's one door."""
