"""How an attempt's image was made: micro-batching and device tuning.

- ``attempts.batch_size``: 1 for a job generated alone, N when it shared one pipeline call
  with N - 1 other jobs (its stage times are then the call's, shared out equally); NULL for
  attempts recorded before batching existed, or not finished.
- ``attempts.tuning``: the worker's device tuning switches (``workers.tuning``), e.g.
  ``channels-last,low-memory``; "" for none, NULL before this migration.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: a table rebuild would drop the count triggers (see 0004).
    op.add_column("attempts", sa.Column("batch_size", sa.Integer(), nullable=True))
    op.add_column("attempts", sa.Column("tuning", sa.String(64), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE attempts DROP COLUMN tuning")
    op.execute("ALTER TABLE attempts DROP COLUMN batch_size")
