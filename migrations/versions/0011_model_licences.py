"""The licence of each model a batch names: ``batches.licences_json``.

A JSON object, model (as the manifest names it) to its licence as ``submit`` found it
(``workers.models.licences``: id, name, url, what the terms say about the images, a restriction,
where the answer came from), recorded once per batch rather than per job. ``jobs show``, the
dashboard and every export read a job's licence from its batch. NULL for batches submitted
before this migration (read as unknown).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("licences_json", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE batches DROP COLUMN licences_json")
