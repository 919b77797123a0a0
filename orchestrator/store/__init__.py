"""JobStore: every SQL statement of the orchestrator, so transaction rules live in one place.

Two sides. ``reads.ReadModel`` holds every query that status, the dashboard, export and the
user's read commands ask (counts, batches, the pause state, images and export; the fleet and the
reports it inherits from ``report_reads.ReportReads``); code that only reads takes one.
``JobStore`` is the write path over it, the one the transports and the commands that change
things use, written in parts by concept: ``jobs`` (submission, the user's retry and cancel),
``leases`` (a job's lifecycle under a lease, for local workers and the Redis dispatcher),
``fleet`` (workers, the coordinator's lease, dead letters), ``integrity`` (what ``verify``
checks and mends) and ``control`` (pause, resume, priority changes). The long SQL statements are
named in ``sql``; the reports' arithmetic is ``reports``.
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
from orchestrator.store.reads import ReadModel

__all__ = [
    "JOB_PAYLOAD_COLUMNS",
    "RESULT_COLUMNS",
    "TIMING_COLUMNS",
    "Claim",
    "JobStore",
    "ReadModel",
    "SubmitResult",
    "WorkerIdentity",
    "backoff_seconds",
    "chunks",
]


class JobStore(JobsMixin, LeasesMixin, FleetMixin, IntegrityMixin, ControlMixin):
    """The job database's one door: the write path, over the read model (``ReadModel``)."""
