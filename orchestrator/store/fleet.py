"""Who is working: the workers table (on what, how fast, last seen, why paused), the one
coordinator's lease, and the dead letters the coordinator refused."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from contract.errors import CoordinatorConflict
from orchestrator.models import CoordinatorLease, DeadLetter, Worker
from orchestrator.store.base import Fence, process_gone
from orchestrator.store.reads import ReadModel

DEAD_LETTERS_KEPT = 10_000  # the newest ones; the count of all is kept apart

WORKER_FIELDS = (
    "name",
    "transport",
    "host",
    "pid",
    "backend",
    "device",
    "model",
    "state",
    "message",
    "current_job",
    "jobs_done",
    "jobs_failed",
    "busy_s",
    "started_at",
    "last_seen",
    "heartbeat_s",
)


class FleetMixin(ReadModel):
    def upsert_workers(
        self, rows: Iterable[dict[str, Any]], *, busy_timeout_s: float | None = None
    ) -> None:
        rows = [{k: r.get(k) for k in WORKER_FIELDS} for r in rows]
        if not rows:
            return
        stmt = sqlite_insert(Worker)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={k: stmt.excluded[k] for k in WORKER_FIELDS if k not in ("name", "started_at")},
        )
        with self._tx(write=True, busy_timeout_s=busy_timeout_s) as conn:
            conn.execute(stmt, rows)

    # -- the one coordinator -------------------------------------------------------------------

    def acquire_coordinator(
        self, holder: str, *, host: str, pid: int, ttl: float, now: float | None = None
    ) -> dict[str, Any] | None:
        """Take the coordinator lease for ``holder``. Returns None when taken, else the row of
        the live holder (who keeps it). A holder whose lease expired is taken over, and so is
        one on this host whose process is gone (a restart after a crash need not wait)."""
        now = time.time() if now is None else now
        with self._tx(write=True) as conn:
            row = conn.execute(select(CoordinatorLease).where(CoordinatorLease.id == 1))
            current = row.mappings().first()
            if (
                current is not None
                and current["expires_at"] > now
                and current["holder"] != holder
                and current["state"] != "stopped"
                and not process_gone(current["host"], current["pid"])
            ):
                return dict(current)
            values = {
                "holder": holder,
                "host": host,
                "pid": pid,
                "since": now,
                "renewed_at": now,
                "expires_at": now + ttl,
                "state": "running",
                "message": None,
            }
            if current is None:
                conn.execute(insert(CoordinatorLease).values(id=1, **values))
            else:
                conn.execute(
                    update(CoordinatorLease).where(CoordinatorLease.id == 1).values(**values)
                )
        return None

    def make_coordinator_fence(self, holder: str) -> Fence:
        """The coordinator's fence (see ``fenced``): raises CoordinatorConflict unless
        ``holder`` still holds the coordinator lease and has not given it up. An expired lease
        nobody took over still fences: taking it over rewrites this row under the write lock,
        so a write that saw ``holder`` here committed before any successor began."""

        def fence(conn: Connection) -> None:
            row = conn.execute(
                select(CoordinatorLease.holder, CoordinatorLease.state).where(
                    CoordinatorLease.id == 1
                )
            ).first()
            if row is None or row.holder != holder or row.state == "stopped":
                who = "nobody" if row is None or row.holder == holder else row.holder
                raise CoordinatorConflict(
                    f"coordinator {holder} lost its lease to {who} (taken over while this one "
                    "was stopped or too slow to renew it); stopping, changing nothing"
                )

        return fence

    def renew_coordinator(
        self,
        holder: str,
        *,
        ttl: float,
        state: str = "running",
        message: str | None = None,
        busy_timeout_s: float = 5.0,
    ) -> bool:
        """Extend the lease (and say what the coordinator is doing); False when another
        coordinator took it over, which tells this one to stop."""
        now = time.time()
        with self._tx(write=True, busy_timeout_s=busy_timeout_s) as conn:
            n = conn.execute(
                update(CoordinatorLease)
                .where(CoordinatorLease.id == 1)
                .where(CoordinatorLease.holder == holder)
                .values(renewed_at=now, expires_at=now + ttl, state=state, message=message)
            ).rowcount
        return n == 1

    def release_coordinator(self, holder: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                update(CoordinatorLease)
                .where(CoordinatorLease.id == 1)
                .where(CoordinatorLease.holder == holder)
                .values(state="stopped", expires_at=time.time(), message=None)
            )

    # -- dead letters ----------------------------------------------------------------------------

    def add_dead_letters(self, letters: Iterable[tuple[str, str, str]]) -> int:
        """Record refused messages as (source, reason, excerpt); keeps the newest
        ``DEAD_LETTERS_KEPT``."""
        rows = [
            {"at": time.time(), "source": s, "reason": r[:500], "excerpt": e[:500]}
            for s, r, e in letters
        ]
        if not rows:
            return 0
        with self._tx(write=True) as conn:
            conn.execute(insert(DeadLetter), rows)
            newest = conn.execute(select(func.max(DeadLetter.id))).scalar_one()
            conn.execute(delete(DeadLetter).where(DeadLetter.id <= newest - DEAD_LETTERS_KEPT))
        return len(rows)
