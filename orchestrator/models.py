"""Tables of the job database. The schema itself is created only by Alembic (``migrations/``).

Times are UNIX seconds (REAL), so a user can do arithmetic on them in plain SQL, and every
stage timing is its own column on ``attempts``.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from contract.status import BatchState

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    manifest_path: Mapped[str | None] = mapped_column(Text)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    job_count: Mapped[int] = mapped_column(Integer)
    duplicates: Mapped[int] = mapped_column(Integer)
    defaults_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), server_default=BatchState.READY.value)
    # While loading: who loads it (host:pid) and when it last wrote, so a dead loader's
    # half-inserted batch can be told from a live one and removed.
    loader: Mapped[str | None] = mapped_column(String(255))
    loader_seen_at: Mapped[float | None] = mapped_column(Float)
    # When the user paused it (NULL: not paused): no new job of it is claimed or dispatched.
    paused_at: Mapped[float | None] = mapped_column(Float)
    # Model (as the manifest names it) to its licence, as submit found it (JSON; NULL before
    # migration 0011): workers.models.licences.
    licences_json: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_lease", "status", "lease_expires_at"),
        Index("ix_jobs_batch_status", "batch_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    line: Mapped[int] = mapped_column(Integer)
    image_index: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    guidance_scale: Mapped[float] = mapped_column(Float)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    scheduler: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(Text)
    quantization: Mapped[str] = mapped_column(String(64))
    tags: Mapped[str] = mapped_column(Text)
    output_name: Mapped[str] = mapped_column(Text)
    output_dir: Mapped[str] = mapped_column(Text, server_default="")
    extra_json: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    not_before: Mapped[float | None] = mapped_column(Float)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    output_path: Mapped[str | None] = mapped_column(Text)
    # The published image: its sha256 is recorded in the commit that makes the job
    # succeeded; published_at is set once the file is at output_path (NULL in between).
    output_sha256: Mapped[str | None] = mapped_column(String(64))
    published_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    # The quality gate the submitter asked for (NULL: none) ...
    min_score: Mapped[float | None] = mapped_column(Float)
    quality_tries: Mapped[int | None] = mapped_column(Integer)
    # ... and what the judge said of the image kept, written with the success: its score,
    # the seed that made it (the job's own seed or a later one), and which judge scored it.
    score: Mapped[float | None] = mapped_column(Float)
    image_seed: Mapped[int | None] = mapped_column(Integer)
    judge: Mapped[str | None] = mapped_column(Text)


# The claim: the next pending job by priority, then submission order...
Index("ix_jobs_claim", Job.status, Job.priority.desc(), Job.id)
# ...and the same among jobs for the model a worker already has loaded.
Index("ix_jobs_claim_model", Job.status, Job.model, Job.priority.desc(), Job.id)
# Recently finished jobs of one status: the dashboard's gallery and failed-jobs list.
Index("ix_jobs_status_finished_at", Job.status, Job.finished_at)
# Succeeded jobs whose file is not yet published: what recovery looks at, often.
Index("ix_jobs_status_published_at", Job.status, Job.published_at)
# Jobs with a quality gate only (partial): status's quality line and `jobs list --below` read
# these without scanning the jobs of batches that have none.
Index(
    "ix_jobs_gated",
    Job.batch_id,
    Job.status,
    Job.score,
    sqlite_where=Job.min_score.is_not(None),
)


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        # Recent succeeded attempts, overall and per batch: the status timings window.
        Index("ix_attempts_status_id", "status", "id"),
        Index("ix_attempts_batch_status_id", "batch_id", "status", "id"),
        # Attempt numbers only grow: a retried job goes on counting.
        Index("uq_attempts_job_id_number", "job_id", "number", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    batch_id: Mapped[int] = mapped_column(Integer)  # the job's, copied so queries need no join
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    worker: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    backend: Mapped[str | None] = mapped_column(String(32))
    device: Mapped[str | None] = mapped_column(String(32))
    dtype: Mapped[str | None] = mapped_column(String(16))
    # Device tuning switches the worker ran with (workers.tuning; "" for none).
    tuning: Mapped[str | None] = mapped_column(String(64))
    torch_threads: Mapped[int | None] = mapped_column(Integer)
    # Images made in the same pipeline call as this one (1: alone); NULL before migration 0008.
    batch_size: Mapped[int | None] = mapped_column(Integer)
    versions_json: Mapped[str | None] = mapped_column(Text)
    queue_wait_s: Mapped[float | None] = mapped_column(Float)
    load_s: Mapped[float | None] = mapped_column(Float)
    text_encode_s: Mapped[float | None] = mapped_column(Float)
    denoise_s: Mapped[float | None] = mapped_column(Float)
    decode_s: Mapped[float | None] = mapped_column(Float)
    encode_s: Mapped[float | None] = mapped_column(Float)
    total_s: Mapped[float | None] = mapped_column(Float)
    peak_mem_mb: Mapped[float | None] = mapped_column(Float)
    output_sha256: Mapped[str | None] = mapped_column(String(64))
    # Where a succeeded attempt's image waits to be published, as its writer spelled it.
    staged_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # A gated job's tries in this attempt: JSON [[seed, score], ...] in the order tried.
    scores_json: Mapped[str | None] = mapped_column(Text)


# Attempts finished in the last minutes: throughput and ETA without scanning the table.
Index("ix_attempts_status_finished_at", Attempt.status, Attempt.finished_at)


class JobCount(Base):
    """Jobs per (batch, status), kept by triggers so status counts never scan the jobs table."""

    __tablename__ = "job_counts"

    batch_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


class Worker(Base):
    """Every worker seen: local ones write their own row, RQ workers' rows come from the
    coordinator (they never touch the database)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    transport: Mapped[str] = mapped_column(String(16))  # local | rq
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    backend: Mapped[str | None] = mapped_column(String(32))
    device: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # one of WORKER_STATES, as the worker said
    message: Mapped[str | None] = mapped_column(Text)  # why it is paused (disk full, ...)
    current_job: Mapped[int | None] = mapped_column(Integer)
    jobs_done: Mapped[int] = mapped_column(Integer)
    jobs_failed: Mapped[int] = mapped_column(Integer)
    busy_s: Mapped[float] = mapped_column(Float)  # seconds spent on succeeded jobs
    started_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float, index=True)
    # The longest it goes between refreshes of this row while alive (None: an older worker).
    heartbeat_s: Mapped[float | None] = mapped_column(Float)


class CoordinatorLease(Base):
    """The one coordinator of this database: who holds it, since when, until when, and what
    it is doing. A second coordinator refuses to start while the lease is live."""

    __tablename__ = "coordinator"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    holder: Mapped[str] = mapped_column(String(255))  # host:pid/token
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    since: Mapped[float] = mapped_column(Float)
    renewed_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))  # running | paused | stopped
    message: Mapped[str | None] = mapped_column(Text)


class DatabaseInfo(Base):
    """This database's own identity: one row (id 1), made by migration 0009. An output folder
    records ``uid`` on first use, so two databases never share one (``orchestrator.ownership``)."""

    __tablename__ = "database"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    uid: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)


class QueueState(Base):
    """The whole queue's switches: one row (id 1), written on first use. ``paused_at`` set:
    no job of any batch is claimed or dispatched (running ones finish)."""

    __tablename__ = "queue_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    paused_at: Mapped[float | None] = mapped_column(Float)


class DeadLetter(Base):
    """A message the coordinator could not use (malformed, forged, too big): kept for a look,
    counted in status, never fatal."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(32))  # event | worker
    reason: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str] = mapped_column(Text)


# The tables themselves, for the store's hot statements: Core statements on a Table skip the
# ORM's bulk-update bookkeeping (about half the Python time of a claim).
JOBS = cast(Table, Job.__table__)
ATTEMPTS = cast(Table, Attempt.__table__)
