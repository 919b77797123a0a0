"""An optional quality gate per job, and what its judge said.

- ``jobs.min_score`` / ``jobs.quality_tries``: the gate the submitter asked for (NULL: none).
- ``jobs.score`` / ``jobs.image_seed`` / ``jobs.judge``: the kept image's score, the seed that
  made it and the judge that scored it, written in the commit that makes the job succeeded.
- ``attempts.scores_json``: every ``[seed, score]`` an attempt tried, passed or not.
- ``ix_jobs_gated``: a partial index over gated jobs only, for status's quality line.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_JOB_COLUMNS = (
    sa.Column("min_score", sa.Float(), nullable=True),
    sa.Column("quality_tries", sa.Integer(), nullable=True),
    sa.Column("score", sa.Float(), nullable=True),
    sa.Column("image_seed", sa.Integer(), nullable=True),
    sa.Column("judge", sa.Text(), nullable=True),
)


def upgrade() -> None:
    # Plain ADD COLUMNs: a table rebuild would drop the count triggers on jobs (see 0004).
    for column in _JOB_COLUMNS:
        op.add_column("jobs", column)
    op.add_column("attempts", sa.Column("scores_json", sa.Text(), nullable=True))
    op.create_index(
        "ix_jobs_gated",
        "jobs",
        ["batch_id", "status", "score"],
        sqlite_where=sa.text("min_score IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_gated", table_name="jobs")
    # SQLite's own DROP COLUMN (3.35+), as in 0004 and 0006.
    op.execute("ALTER TABLE attempts DROP COLUMN scores_json")
    for column in reversed(_JOB_COLUMNS):
        op.execute(f"ALTER TABLE jobs DROP COLUMN {column.name}")
