"""The store's long SQL statements, named, in one place.

Most of the store speaks SQLAlchemy Core; these are the statements it writes as SQL text: for
the speed of the driver's own ``executemany`` (``INSERT_JOBS``), for one statement that picks
and takes a job under the write lock (the claim), for an index SQLite must be told to use
(``THROUGHPUT``), or for a grouping Core would spell at twice the length (``FAILURE_GROUPS``).
Each is used where it was written before; the parts that read it say why it is shaped so.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import text

from contract.job import BATCH_FIELDS, PAYLOAD_FIELDS
from orchestrator.manifest import JobSpec

# -- submitting (``jobs``) -------------------------------------------------------------------

# The columns of a submitted job: the manifest's job spec (its extra metadata as JSON)
# plus the bookkeeping the store sets.
SPEC_COLUMNS = tuple(f.name for f in dataclasses.fields(JobSpec) if f.name != "extra")
INSERT_COLUMNS = (
    "batch_id",
    "fingerprint",
    "status",
    *SPEC_COLUMNS,
    "extra_json",
    "attempts",
    "max_attempts",
    "created_at",
)
INSERT_JOBS = (
    f"INSERT INTO jobs ({', '.join(INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(INSERT_COLUMNS))}) ON CONFLICT (fingerprint) DO NOTHING"
)
# A chunk of a loaded batch's jobs made pending (params: batch id, rows).
PUBLISH_LOADED_CHUNK = (
    "UPDATE jobs SET status = 'pending' WHERE id IN "
    "(SELECT id FROM jobs WHERE batch_id = ? AND status = 'loading' LIMIT ?)"
)
# A chunk of a half-loaded batch's jobs removed (params: batch id, rows).
DROP_LOADING_CHUNK = (
    "DELETE FROM jobs WHERE id IN "
    "(SELECT id FROM jobs WHERE batch_id = ? AND status = 'loading' LIMIT ?)"
)

# -- the pause (``control``, ``leases``) -------------------------------------------------------

# A pending job may be taken only while the queue runs and its batch is not paused.
QUEUE_RUNS_SQL = "NOT EXISTS (SELECT 1 FROM queue_state WHERE paused_at IS NOT NULL)"
BATCH_RUNS_SQL = "batch_id NOT IN (SELECT id FROM batches WHERE paused_at IS NOT NULL)"

# Whether any job is queued or running, or pending and not held back by a pause.
HAS_WORKABLE = text(
    f"""
            SELECT EXISTS (
                SELECT 1 FROM job_counts
                 WHERE n > 0
                   AND (status IN ('queued', 'running')
                        OR (status = 'pending' AND {QUEUE_RUNS_SQL} AND {BATCH_RUNS_SQL})))
            """
)

# -- the claim (``leases``) --------------------------------------------------------------------

# Paused batches (and everything, while the queue is paused) are skipped: the pause is
# read in the same write transaction that takes the job, so a committed pause stops every
# later claim. The pick: the highest priority, then the oldest; among equals, one for the
# model this worker has loaded.
PICK = f"""COALESCE(
               (SELECT id FROM jobs
                 WHERE status = 'pending' AND model = :model
                   AND (not_before IS NULL OR not_before <= :now)
                   AND {BATCH_RUNS_SQL}
                   AND priority = (SELECT priority FROM jobs
                                    WHERE status = 'pending'
                                      AND (not_before IS NULL OR not_before <= :now)
                                      AND {BATCH_RUNS_SQL}
                                    ORDER BY priority DESC, id LIMIT 1)
                 ORDER BY priority DESC, id LIMIT 1),
               (SELECT id FROM jobs
                 WHERE status = 'pending' AND (not_before IS NULL OR not_before <= :now)
                   AND {BATCH_RUNS_SQL}
                 ORDER BY priority DESC, id LIMIT 1))"""
TAKE = f"""UPDATE jobs
           SET status = 'running', lease_owner = :owner, lease_expires_at = :expires,
               attempts = attempts + 1, started_at = COALESCE(started_at, :now)
         WHERE status = 'pending'
           AND {QUEUE_RUNS_SQL}"""
RETURNING = "RETURNING {columns}, created_at, not_before".format(columns=", ".join(PAYLOAD_FIELDS))
# One statement: pick and take under the write lock (nothing paused: the pick is an index
# seek).
CLAIM = text(f"{TAKE} AND id = {PICK} {RETURNING}")
# Two steps while something is paused: the pick, which may walk past many paused jobs,
# is read without the write lock; the take re-checks everything under it.
PICK_ONE = text(f"SELECT {PICK}")
TAKE_ID = text(
    f"""{TAKE} AND id = :id AND (not_before IS NULL OR not_before <= :now)
           AND {BATCH_RUNS_SQL} {RETURNING}"""
)
# Jobs that may share the first claim's pipeline call (``workers.task.batch_key``): the
# same model variant, size, steps, scheduler and guidance, no quality gate, and the same
# priority (a batch never pulls lower-priority work ahead of other jobs), oldest first.
COMPANIONS = text(
    f"""SELECT id FROM jobs
             WHERE status = 'pending' AND model = :model AND quantization = :quantization
               AND {" AND ".join(f"{c} = :{c}" for c in BATCH_FIELDS)}
               AND min_score IS NULL AND id != :first
               AND priority = (SELECT priority FROM jobs WHERE id = :first)
               AND (not_before IS NULL OR not_before <= :now)
               AND {BATCH_RUNS_SQL}
             ORDER BY id LIMIT :limit"""
)

# -- reports -----------------------------------------------------------------------------------

# Images per batch that succeeded since ``:since``, and the earliest start among them.
# INDEXED BY: with statistics SQLite prefers ix_attempts_batch_status_id, which saves
# the GROUP BY's sort but reads every succeeded attempt ever; this reads the window.
THROUGHPUT = text(
    "SELECT batch_id, count(*) AS images, min(started_at) AS first_start "
    "FROM attempts INDEXED BY ix_attempts_status_finished_at "
    "WHERE status = :succeeded AND finished_at >= :since GROUP BY batch_id"
)

NO_ERROR_TEXT = "(no error text)"
# The text failures are grouped by, in SQL (``reports.error_key`` in Python): a local lease
# owner's claim token cut out of "lease expired" errors.
# 29 = len("/<8 hex digits> stopped renewing it")
ERROR_KEY_SQL = (
    "CASE WHEN error GLOB 'lease expired: worker */"
    + "[0-9a-f]" * 8
    + " stopped renewing it' THEN substr(error, 1, length(error) - 29) || ' stopped renewing it'"
    f" ELSE coalesce(nullif(error, ''), '{NO_ERROR_TEXT}') END"
)
# Failed and lost attempts among the last ``:window`` of each, grouped by error text; a
# template: ``{batch}`` is "" or "AND batch_id = :batch".
FAILURE_GROUPS = f"""
        WITH w AS (
            SELECT * FROM (SELECT id, job_id, finished_at, worker, status, {ERROR_KEY_SQL} AS key
                             FROM attempts WHERE status = 'failed' {{batch}}
                            ORDER BY id DESC LIMIT :window)
            UNION ALL
            SELECT * FROM (SELECT id, job_id, finished_at, worker, status, {ERROR_KEY_SQL} AS key
                             FROM attempts WHERE status = 'lost' {{batch}}
                            ORDER BY id DESC LIMIT :window)
        ),
        per_job AS (
            SELECT key, job_id, max(id) AS last_id,
                   row_number() OVER (PARTITION BY key ORDER BY max(id) DESC) AS rn
              FROM w GROUP BY key, job_id
        )
        SELECT g.key, g.attempts, g.lost, g.jobs, g.last_seen, g.workers, e.examples
          FROM (SELECT key, count(*) AS attempts, sum(status = 'lost') AS lost,
                       count(DISTINCT job_id) AS jobs, max(finished_at) AS last_seen,
                       group_concat(DISTINCT worker) AS workers
                  FROM w GROUP BY key) AS g
          JOIN (SELECT key, group_concat(last_id || ':' || job_id) AS examples
                  FROM per_job WHERE rn <= :examples GROUP BY key) AS e ON e.key = g.key
         ORDER BY g.attempts DESC, g.last_seen DESC
    """
