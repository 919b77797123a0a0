"""How often each worker says it is alive: ``workers.heartbeat_s``.

The longest a worker goes between refreshes of its row while all is well (an RQ worker's
``--heartbeat``, or its idle poll if longer; a local worker's row refresh). ``status`` and the
dashboard show a worker silent for several of these as stale, then gone. NULL for rows written
before this migration (read as the default heartbeat).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("heartbeat_s", sa.Float(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE workers DROP COLUMN heartbeat_s")
