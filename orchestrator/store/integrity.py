"""What ``orchestrate verify`` reads and mends: succeeded jobs and their images, open attempts
and leases nobody holds any more."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import and_, select, update

from contract.status import AttemptStatus, JobStatus
from orchestrator.models import ATTEMPTS, JOBS, Attempt, Job
from orchestrator.output import PATH_FIELDS
from orchestrator.store.base import HELD_STATUSES, OPEN_ATTEMPTS, chunks
from orchestrator.store.reads import ReadModel

_PAGE = 5000


class IntegrityMixin(ReadModel):
    def iter_succeeded_images(self) -> Iterator[list[dict[str, Any]]]:
        """Every succeeded job's id, batch, path, sha256 and publication, a page at a time."""
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = [
                    dict(r)
                    for r in conn.execute(
                        select(
                            Job.id,
                            Job.batch_id,
                            Job.output_path,
                            Job.output_sha256,
                            Job.published_at,
                        )
                        .where(Job.status == JobStatus.SUCCEEDED.value)
                        .where(Job.id > last)
                        .order_by(Job.id)
                        .limit(_PAGE)
                    ).mappings()
                ]
            if not rows:
                return
            yield rows
            last = rows[-1]["id"]

    def read_image_owners(self, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """These jobs' status, recorded output path and the fields their image's path is made
        of (``orchestrator.output.image_path``); absent: no such job."""
        cols = [Job.id, Job.status, Job.output_path, *(Job.__table__.c[f] for f in PATH_FIELDS)]
        out: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for part in chunks(list(job_ids)):
                for row in conn.execute(select(*cols).where(Job.id.in_(part))).mappings():
                    out[row["id"]] = dict(row)
        return out

    def adopt_image(self, job_id: int, sha256: str) -> bool:
        """Record the sha256 of a succeeded job's file written before this project recorded
        them (its database was migrated)."""
        with self._tx(write=True) as conn:
            return (
                conn.execute(
                    update(JOBS)
                    .where(Job.id == job_id)
                    .where(Job.status == JobStatus.SUCCEEDED.value)
                    .where(Job.output_sha256.is_(None))
                    .values(output_sha256=sha256, published_at=time.time())
                ).rowcount
                == 1
            )

    def find_stranded(self, now: float | None = None) -> dict[str, list[dict[str, Any]]]:
        """Leases and attempts left behind: running jobs whose lease expired (their worker
        died and nobody has claimed since), and open attempts whose job no longer holds them
        (finished, cancelled or pending again)."""
        now = time.time() if now is None else now
        latest = Attempt.__table__.alias("latest")
        newest_attempt = (
            select(latest.c.id)
            .where(latest.c.job_id == Job.id)
            .order_by(latest.c.id.desc())
            .limit(1)
            .correlate(Job)
            .scalar_subquery()
        )
        with self.engine.connect() as conn:
            expired = [
                dict(r)
                for r in conn.execute(
                    select(Job.id, Job.lease_owner, Job.lease_expires_at)
                    .where(Job.status == JobStatus.RUNNING.value)
                    .where(Job.lease_expires_at < now)
                    .order_by(Job.id)
                ).mappings()
            ]
            orphan_attempts = [
                dict(r)
                for r in conn.execute(
                    select(
                        Attempt.id, Attempt.job_id, Attempt.status, Job.status.label("job_status")
                    )
                    .join(Job, Job.id == Attempt.job_id)
                    .where(Attempt.status.in_(OPEN_ATTEMPTS))
                    .where(~and_(Job.status.in_(HELD_STATUSES), Attempt.id == newest_attempt))
                    .order_by(Attempt.id)
                ).mappings()
            ]
        return {"expired_leases": expired, "open_attempts": orphan_attempts}

    def close_attempts(self, attempt_ids: Sequence[int], error: str) -> int:
        n = 0
        with self._tx(write=True) as conn:
            for part in chunks(list(attempt_ids)):
                n += conn.execute(
                    update(ATTEMPTS)
                    .where(Attempt.id.in_(part))
                    .where(Attempt.status.in_(OPEN_ATTEMPTS))
                    .values(status=AttemptStatus.LOST.value, finished_at=time.time(), error=error)
                ).rowcount
        return n
