"""Per-row output folders: ``jobs.output_dir``, a folder relative to the output directory
(empty: the batch's own folder, as before).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: a table rebuild would drop the count triggers on jobs.
    op.add_column("jobs", sa.Column("output_dir", sa.Text(), server_default="", nullable=False))


def downgrade() -> None:
    # SQLite's own DROP COLUMN (3.35+), as in 0004.
    op.execute("ALTER TABLE jobs DROP COLUMN output_dir")
