"""How long each kind of failure takes to recover from, with the default settings.

    python benchmarks/recovery.py

Each scenario runs real processes (``orchestrate coordinator``, RQ and local workers with the
chaos suite's fake pipeline, so the figures are the orchestration's, not the model's; each job
takes a few seconds) against a private redis-server and SQLite file, injects one fault, and
reports the seconds from the fault to the job being taken up again (its attempt marked lost,
or its result published):

- rq_worker_killed: SIGKILL of an RQ worker mid-job -> the job dispatched again. Expected:
  3 x --heartbeat (5 s) for its heartbeat key to expire, plus --lost-after (5 s).
- local_worker_killed: SIGKILL of a local worker mid-job -> claimed again by another local
  worker. Expected: up to one --lease (30 s).
- coordinator_killed: SIGKILL of the coordinator, restarted at once on the same host -> the
  next result recorded. Expected: a process start (the dead holder's lease is taken over at
  once, its pid being gone).
- coordinator_hung: the coordinator stopped (SIGSTOP: alive but silent, as one on a host that
  dropped off the network) and a second one started -> the second takes over. Expected: the
  rest of the lease (15 s).
- redis_restarted: Redis killed and restarted empty while a job waits in its queue -> the job
  dispatched again. Expected: --lost-after (5 s) after Redis is back.
- killed_between_commit_and_publish: the coordinator SIGKILLed after recording a success and
  before moving the image into place, then restarted -> the image published.

What it does not measure: the model's load time on a restarted worker (minutes for a Core ML
package, seconds for the tiny model), and networks slower than loopback.
"""

from __future__ import annotations

import functools
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from _common import ROOT, save

sys.path.insert(0, str(ROOT))
from tests.chaos.harness import Cluster

JOB_S = ("--min-s", "3", "--max-s", "4")  # each fake job takes 3-4 s: long enough to kill in


def q(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db, timeout=60)) as conn:
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []


def wait(predicate: Callable[[], Any], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError("timed out")


def running(c: Cluster) -> int:
    rows = wait(lambda: q(c.db, "SELECT id FROM jobs WHERE status = 'running' ORDER BY id"))
    return int(rows[0][0])


def lost_at(c: Cluster, job: int) -> float:
    rows = wait(
        lambda: q(
            c.db, "SELECT finished_at FROM attempts WHERE job_id = ? AND status = 'lost'", job
        )
    )
    return float(rows[0][0])


def _worker_killed(root: Path, local: bool) -> float:
    """A worker killed mid-job: seconds from the kill until its job's attempt is lost (and
    the job is free for the rescuer)."""
    with closing(Cluster(root, coordinator_args=())) as c:  # the defaults
        c.submit(2, seed=1)
        if not local:
            c.coordinator("coordinator")

        def start(name: str) -> None:
            if local:
                c.local_worker(name, "", "--lease", "30", *JOB_S)
            else:
                c.rq_worker(name, "", "--heartbeat", "5", *JOB_S)

        start("victim")
        job = running(c)
        time.sleep(1.0)
        c.kill("victim")
        killed = time.time()
        start("rescuer")
        return lost_at(c, job) - killed


def rq_worker_killed(root: Path) -> float:
    return _worker_killed(root, local=False)


def local_worker_killed(root: Path) -> float:
    return _worker_killed(root, local=True)


def coordinator_killed(root: Path) -> float:
    with closing(Cluster(root, coordinator_args=())) as c:  # the defaults
        c.submit(3, seed=1)
        c.coordinator("coordinator")
        c.rq_worker("w", "", "--heartbeat", "5", *JOB_S)
        running(c)
        c.kill("coordinator")
        killed = time.time()
        before = q(c.db, "SELECT count(*) FROM jobs WHERE status = 'succeeded'")[0][0]
        c.coordinator("coordinator-2")
        wait(lambda: q(c.db, "SELECT count(*) FROM jobs WHERE status = 'succeeded'")[0][0] > before)
        return float(q(c.db, "SELECT max(finished_at) FROM jobs")[0][0]) - killed


def coordinator_hung(root: Path) -> float:
    with closing(Cluster(root, coordinator_args=())) as c:  # the defaults
        c.submit(2, seed=1)
        first = c.coordinator("coordinator")
        wait(lambda: q(c.db, "SELECT holder FROM coordinator"))
        first.send_signal(signal.SIGSTOP)
        stopped = time.time()
        # A service manager restarting the coordinator every second (systemd's RestartSec):
        # each try is refused while the hung one's lease lives, then one takes over.
        for n in range(120):
            tried = time.monotonic()
            second = c.coordinator(f"coordinator-{n}")
            holds = wait(functools.partial(_refused_or_holding, c, second))
            if holds is not True:
                break  # its pid holds the lease
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tried)))
        took_over = time.time() - stopped
        first.send_signal(signal.SIGCONT)
        # the old one finds itself fenced off at its next lease renewal and exits
        first.wait(60)
        return took_over


def _refused_or_holding(c: Cluster, proc: Any) -> Any:
    """True when the coordinator process exited (refused), its lease row when it holds it."""
    return proc.poll() is not None or q(c.db, "SELECT pid FROM coordinator WHERE pid = ?", proc.pid)


def redis_restarted(root: Path) -> float:
    with closing(Cluster(root, coordinator_args=())) as c:  # the defaults
        c.submit(3, seed=1)
        c.coordinator("coordinator")
        c.rq_worker("w", "", "--heartbeat", "5", *JOB_S)
        running(c)
        queued = wait(lambda: q(c.db, "SELECT id FROM jobs WHERE status = 'queued'"))[0][0]
        c.redis.stop()
        c.redis.start()  # empty: the queued job is forgotten
        back = time.time()
        return lost_at(c, queued) - back


def killed_between_commit_and_publish(root: Path) -> float:
    with closing(Cluster(root, coordinator_args=())) as c:  # the defaults
        c.submit(2, seed=1)
        coord = c.coordinator("coordinator", "results.committed=kill@1")
        c.rq_worker("w", "", "--heartbeat", "5", "--min-s", "0.2", "--max-s", "0.3")
        coord.wait(120)
        killed = time.time()
        job = q(c.db, "SELECT id FROM jobs WHERE status = 'succeeded' AND published_at IS NULL")[0][
            0
        ]
        c.coordinator("coordinator-2")
        wait(lambda: q(c.db, "SELECT published_at FROM jobs WHERE id = ?", job)[0][0])
        return float(q(c.db, "SELECT published_at FROM jobs WHERE id = ?", job)[0][0]) - killed


SCENARIOS = {
    "rq_worker_killed": rq_worker_killed,
    "local_worker_killed": local_worker_killed,
    "coordinator_killed": coordinator_killed,
    "coordinator_hung": coordinator_hung,
    "redis_restarted": redis_restarted,
    "killed_between_commit_and_publish": killed_between_commit_and_publish,
}


def main() -> None:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        for name, scenario in SCENARIOS.items():
            seconds = scenario(Path(d) / name)
            figures[name] = round(seconds, 2)
            print(f"{name:<36} recovered in {seconds:6.1f} s", flush=True)
    save(
        "recovery",
        {
            "recovery_s": figures,
            "settings": {
                "heartbeat_s": 5,
                "lost_after_s": 5,
                "lease_s": 30,
                "coordinator_lease_s": 15,
            },
        },
    )


if __name__ == "__main__":
    main()
