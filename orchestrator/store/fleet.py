"""The workers table: who is working, on what, how fast, and when they were last seen."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.models import Worker
from orchestrator.store.base import StoreBase

WORKER_FIELDS = (
    "name",
    "transport",
    "host",
    "pid",
    "backend",
    "device",
    "model",
    "state",
    "current_job",
    "jobs_done",
    "jobs_failed",
    "busy_s",
    "started_at",
    "last_seen",
)


class FleetMixin(StoreBase):
    def upsert_workers(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = [{k: r.get(k) for k in WORKER_FIELDS} for r in rows]
        if not rows:
            return
        stmt = sqlite_insert(Worker)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={k: stmt.excluded[k] for k in WORKER_FIELDS if k not in ("name", "started_at")},
        )
        with self._tx(write=True) as conn:
            conn.execute(stmt, rows)

    def workers(self, seen_within: float | None = 3600.0) -> list[dict[str, Any]]:
        """Workers seen in the last ``seen_within`` seconds (all when None), newest first, with
        mean seconds per image."""
        stmt = select(Worker).order_by(Worker.last_seen.desc())
        if seen_within is not None:
            stmt = stmt.where(Worker.last_seen >= time.time() - seen_within)
        with self.engine.connect() as conn:
            out = [dict(r) for r in conn.execute(stmt).mappings()]
        for w in out:
            w["s_per_image"] = w["busy_s"] / w["jobs_done"] if w["jobs_done"] else None
        return out
