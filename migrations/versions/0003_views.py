"""Views for the questions users ask in ``sqlite3`` or Datasette, and the indexes behind the
dashboard's recent-work queries.

Views (read-only, always current):

- ``v_batch_progress``: one row per batch: jobs by status, done, percent done.
- ``v_worker_stats``: one row per worker: where it runs, what it has done, mean s/image.
- ``v_failures``: failed jobs grouped by their error text, most frequent first.
- ``v_job_timings``: one row per succeeded attempt with its job's parameters and stage
  timings, denoise time per step included.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VIEWS = {
    # From the trigger-kept counts: as cheap at a million jobs as at ten.
    "v_batch_progress": """
        SELECT b.id AS batch_id,
               b.name,
               datetime(b.created_at, 'unixepoch') AS created,
               COALESCE(SUM(c.n), 0) AS jobs,
               COALESCE(SUM(CASE WHEN c.status = 'pending' THEN c.n END), 0) AS pending,
               COALESCE(SUM(CASE WHEN c.status = 'queued' THEN c.n END), 0) AS queued,
               COALESCE(SUM(CASE WHEN c.status = 'running' THEN c.n END), 0) AS running,
               COALESCE(SUM(CASE WHEN c.status = 'succeeded' THEN c.n END), 0) AS succeeded,
               COALESCE(SUM(CASE WHEN c.status = 'failed' THEN c.n END), 0) AS failed,
               COALESCE(SUM(CASE WHEN c.status = 'cancelled' THEN c.n END), 0) AS cancelled,
               COALESCE(SUM(CASE WHEN c.status IN ('succeeded', 'failed', 'cancelled')
                                 THEN c.n END), 0) AS done,
               ROUND(100.0 * COALESCE(SUM(CASE WHEN c.status IN ('succeeded', 'failed',
                                                                 'cancelled')
                                               THEN c.n END), 0)
                     / MAX(COALESCE(SUM(c.n), 0), 1), 1) AS percent_done
          FROM batches b
          LEFT JOIN job_counts c ON c.batch_id = b.id
         GROUP BY b.id
    """,
    "v_worker_stats": """
        SELECT name,
               transport,
               host,
               backend,
               device,
               model,
               state,
               current_job,
               jobs_done,
               jobs_failed,
               ROUND(busy_s, 3) AS busy_s,
               CASE WHEN jobs_done > 0 THEN ROUND(busy_s / jobs_done, 3) END AS s_per_image,
               datetime(started_at, 'unixepoch') AS started,
               datetime(last_seen, 'unixepoch') AS last_seen,
               ROUND((julianday('now') - 2440587.5) * 86400.0 - last_seen, 1) AS seen_s_ago
          FROM workers
    """,
    # Grouped as the dashboard groups them: a lost local lease's claim token is left out.
    "v_failures": """
        SELECT error,
               COUNT(*) AS jobs,
               datetime(MAX(finished_at), 'unixepoch') AS last_seen,
               MIN(id) AS first_job_id,
               MAX(id) AS last_job_id,
               COUNT(DISTINCT batch_id) AS batches
          FROM (SELECT id, batch_id, finished_at,
                       CASE WHEN last_error GLOB 'lease expired: worker */[0-9a-f][0-9a-f]'
                                                 || '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
                                                 || '[0-9a-f] stopped renewing it'
                            THEN substr(last_error, 1, length(last_error) - 29)
                                 || ' stopped renewing it'
                            ELSE COALESCE(NULLIF(last_error, ''), '(no error text)') END AS error
                  FROM jobs
                 WHERE status = 'failed')
         GROUP BY error
         ORDER BY jobs DESC
    """,
    "v_job_timings": """
        SELECT a.job_id,
               a.id AS attempt_id,
               a.batch_id,
               a.worker,
               a.host,
               a.backend,
               a.device,
               j.model,
               j.steps,
               j.width,
               j.height,
               j.scheduler,
               a.queue_wait_s,
               a.load_s,
               a.text_encode_s,
               a.denoise_s,
               a.denoise_s / j.steps AS denoise_per_step_s,
               a.decode_s,
               a.encode_s,
               a.total_s,
               a.peak_mem_mb,
               datetime(a.finished_at, 'unixepoch') AS finished,
               j.output_path,
               j.prompt
          FROM attempts a
          JOIN jobs j ON j.id = a.job_id
         WHERE a.status = 'succeeded'
    """,
}


def upgrade() -> None:
    op.create_index("ix_jobs_status_finished_at", "jobs", ["status", "finished_at"])
    op.create_index("ix_attempts_status_finished_at", "attempts", ["status", "finished_at"])
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_attempts_status_finished_at", table_name="attempts")
    op.drop_index("ix_jobs_status_finished_at", table_name="jobs")
