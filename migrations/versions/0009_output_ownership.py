"""Whose output folder is it, and where is a committed image staged.

- ``database``: one row (id 1) holding this database's own id (``uid``, random, made once).
  An output folder records the id of the database that first published into it
  (``orchestrator.ownership``), so a second database never writes, repairs or exports there.
- ``attempts.staged_path``: where a succeeded attempt's image was staged, as its writer spelled
  it. Recovery publishes from that file, never from a path guessed from its own ``--output``;
  NULL for attempts recorded before this migration (recovery then guesses as before).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "database",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_database")),
    )
    op.bulk_insert(table, [{"id": 1, "uid": uuid.uuid4().hex, "created_at": time.time()}])
    # A plain ADD COLUMN: a table rebuild would drop the count triggers (see 0004).
    op.add_column("attempts", sa.Column("staged_path", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE attempts DROP COLUMN staged_path")
    op.drop_table("database")
