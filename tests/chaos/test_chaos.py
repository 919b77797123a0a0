"""The chaos suite: randomized rounds with a fixed list of seeds, each ending with the
invariants (no job lost, none doubled, every file its succeeded attempt's bytes, ``verify``
clean); a kill at every fault point; a Redis error at every Redis call site, in turn."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.chaos.harness import KILL_POINTS, Cluster, Outcome, run_round

pytestmark = pytest.mark.slow

SEEDS = [11, 23, 37, 41, 59, 73]
QUICK = ("--min-s", "0.02", "--max-s", "0.06")  # jobs of these rounds: a fault is all they test


@pytest.mark.parametrize("seed", SEEDS)
def test_a_random_round_keeps_every_invariant(tmp_path: Path, seed: int) -> None:
    outcome = run_round(tmp_path / f"round-{seed}", seed)
    assert outcome.ok, outcome.summary()


def _one_fault_round(
    root: Path, who: str, faults: str, jobs: int = 12
) -> tuple[Outcome, int | None]:
    """A round with one process carrying ``faults``; returns the outcome and that process's
    exit status when the fault phase ended (None: still running)."""
    cluster = Cluster(root)
    outcome = Outcome(seed=0, jobs=jobs, faults=[f"{who}:{faults}"])
    try:
        cluster.submit(jobs, seed=0)
        faulty = {
            "coordinator": cluster.coordinator(
                "coordinator", faults if who == "coordinator" else ""
            ),
            "rq": cluster.rq_worker("rq-1", faults if who == "rq" else "", *QUICK),
        }
        if who == "local":
            faulty["local"] = cluster.local_worker("local-1", faults, *QUICK)
        # The fault fires in here: until the work is done or the faulty process is dead.
        cluster.wait_quiet(60, until=lambda: faulty[who].poll() is not None)
        status = faulty[who].poll()
        cluster.finish()
        return cluster.check(outcome), status
    finally:
        cluster.close()


@pytest.mark.parametrize(
    ("who", "point"), [(who, point) for who, points in KILL_POINTS.items() for point in points]
)
def test_a_kill_at_every_fault_point(tmp_path: Path, who: str, point: str) -> None:
    outcome, status = _one_fault_round(tmp_path, who, f"{point}=kill@2")
    assert status == -signal.SIGKILL, f"the fault at {point} never fired"
    assert outcome.ok, outcome.summary()


def _redis_sites(tmp_path: Path) -> dict[str, list[str]]:
    """Every Redis call site of the coordinator and the worker, as a clean round makes them."""
    sites: dict[str, list[str]] = {}
    for who in ("coordinator", "rq"):
        record = tmp_path / f"sites-{who}.txt"
        _one_fault_round(tmp_path / f"record-{who}", who, f"record={record}", jobs=6)[0]
        seen = dict.fromkeys(record.read_text().split())  # in order of first use
        sites[who] = list(seen)
    return sites


def test_a_redis_error_at_every_call_site_in_turn(tmp_path: Path) -> None:
    sites = _redis_sites(tmp_path)
    assert len(sites["coordinator"]) >= 10 and len(sites["rq"]) >= 10, sites
    failures = []
    for who, names in sites.items():
        for i, site in enumerate(names):
            outcome, status = _one_fault_round(
                tmp_path / f"{who}-{i}", who, f"redis:{site}=error@1", jobs=6
            )
            if not outcome.ok:
                failures.append(outcome.summary())
            if status is not None:  # a Redis error must never end a process
                failures.append(f"{who} exited {status} after a Redis error at {site}")
    assert not failures, "\n".join(failures)
