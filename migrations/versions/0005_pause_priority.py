"""Pause and resume: a batch, or the whole queue, can be paused.

- ``batches.paused_at``: when the batch was paused (NULL: not paused). Workers claim no job
  of a paused batch and the coordinator dispatches none; running jobs finish.
- ``queue_state``: one row (``id`` = 1) whose ``paused_at`` pauses every batch at once.
  No row, or a NULL ``paused_at``, means the queue runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (see 0004: no batch-mode table rebuild).
    op.add_column("batches", sa.Column("paused_at", sa.Float(), nullable=True))
    op.create_table(
        "queue_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("paused_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_state")),
    )


def downgrade() -> None:
    op.drop_table("queue_state")
    # SQLite's own DROP COLUMN (3.35+), as in 0004.
    op.execute("ALTER TABLE batches DROP COLUMN paused_at")
