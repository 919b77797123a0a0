"""Exactly once: published images with their sha256, chunked submits, attempt numbers that only
grow, one coordinator per database, and dead letters.

- ``jobs.output_sha256`` / ``jobs.published_at``: the commit that makes a job succeeded
  records its image's sha256; ``published_at`` is set when the file is in place. Jobs that
  succeeded before this revision were written before their commit, so they count as published.
- ``batches.state`` (loading | publishing | ready) with ``loader`` / ``loader_seen_at``: a big
  manifest goes in as short transactions and stays invisible until complete.
- ``attempts.output_sha256`` and a unique ``(job_id, number)``: duplicate numbers that a retry
  made before this revision are renumbered in id order first.
- ``workers.message``: why a worker is paused (a full disk, a busy database).
- ``coordinator``: the lease of the one coordinator; ``dead_letters``: refused messages.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs and indexes only: a batch-mode table rebuild would drop the count
    # triggers on jobs and trip over the views that name these tables.
    op.add_column(
        "batches", sa.Column("state", sa.String(length=16), server_default="ready", nullable=False)
    )
    op.add_column("batches", sa.Column("loader", sa.String(length=255), nullable=True))
    op.add_column("batches", sa.Column("loader_seen_at", sa.Float(), nullable=True))

    op.add_column("jobs", sa.Column("output_sha256", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("published_at", sa.Float(), nullable=True))
    op.execute(
        "UPDATE jobs SET published_at = finished_at "
        "WHERE status = 'succeeded' AND output_path IS NOT NULL"
    )
    op.create_index("ix_jobs_status_published_at", "jobs", ["status", "published_at"])

    op.execute(
        """
        UPDATE attempts SET number = (
            SELECT rn FROM (
                SELECT id, row_number() OVER (PARTITION BY job_id ORDER BY id) AS rn
                  FROM attempts
            ) AS r WHERE r.id = attempts.id)
        """
    )
    op.add_column("attempts", sa.Column("output_sha256", sa.String(length=64), nullable=True))
    op.create_index("uq_attempts_job_id_number", "attempts", ["job_id", "number"], unique=True)

    op.add_column("workers", sa.Column("message", sa.Text(), nullable=True))

    op.create_table(
        "coordinator",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("renewed_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coordinator")),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("excerpt", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("coordinator")
    # SQLite's own DROP COLUMN (3.35+), for the reason given in upgrade().
    op.execute("ALTER TABLE workers DROP COLUMN message")
    op.drop_index("uq_attempts_job_id_number", table_name="attempts")
    op.execute("ALTER TABLE attempts DROP COLUMN output_sha256")
    op.drop_index("ix_jobs_status_published_at", table_name="jobs")
    # Loading jobs have no meaning before this revision: drop them with their batches.
    op.execute("DELETE FROM jobs WHERE status = 'loading'")
    op.execute("DELETE FROM batches WHERE state != 'ready'")
    for column in ("published_at", "output_sha256"):
        op.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    for column in ("loader_seen_at", "loader", "state"):
        op.execute(f"ALTER TABLE batches DROP COLUMN {column}")
