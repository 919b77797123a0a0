"""The statuses of jobs, attempts, batches and workers, spelled once: the store writes them,
status, the dashboard and the CLI read them."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    LOADING = "loading"  # inserted by a submit still in progress: invisible to workers
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING)
FINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# What users count and see: a job still loading belongs to no one yet.
VISIBLE_STATUSES = (*ACTIVE_STATUSES, *FINAL_STATUSES)


class BatchState(enum.StrEnum):
    LOADING = "loading"  # its jobs are being inserted, in short transactions
    PUBLISHING = "publishing"  # all inserted; being made pending (anyone may finish this)
    READY = "ready"


class AttemptStatus(enum.StrEnum):
    DISPATCHED = "dispatched"  # sent to Redis, no worker has it yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"  # the worker stopped renewing its lease (killed, hung, cut off)
    RELEASED = "released"  # the worker gave the job back on shutdown
    SUPERSEDED = "superseded"  # a result came after the job was finished or cancelled
    CANCELLED = "cancelled"  # the user cancelled the job while this attempt was open


# What a worker says it is doing: loading a model (at start, or for its job), busy on a job,
# idle, paused (and why: disk full, database busy), stopped (it exited cleanly). What status
# shows adds stale and gone for a worker not heard from (``orchestrator.status.presence``).
WORKER_STATES: tuple[str, ...] = ("loading", "idle", "busy", "paused", "stopped")
