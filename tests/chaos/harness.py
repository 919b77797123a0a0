"""Chaos rounds: a private redis-server, SQLite file and output folder; a coordinator, RQ
workers and local workers as real processes (fake pipeline); faults injected at random moments
from a seeded plan; then a clean finish and the invariants checked.

Used by ``tests/chaos`` (a fixed list of seeds, a few minutes in CI) and by
``benchmarks/chaos.py`` (as many rounds as time allows, with longer outages).

The invariants, for every job of the round:
- it ends succeeded (none lost), except those a round cancelled on purpose;
- exactly one succeeded attempt (none doubled), whose recorded sha256 is the job's;
- its file exists and is exactly that attempt's bytes (the fake image names its attempt);
- ``verify`` is clean: no orphan image, no staged or temporary file left, no stranded lease;
- no result once recorded had to be made again (a succeeded attempt later marked lost);
- the output folder is one folder however it is spelled: local workers write through a
  symlink to it (``output-link``), and a ``verify --repair`` through that link at the end
  changes nothing (it once unlinked every image as an "orphan").

The output folder may be read-only for part of a round (``unwritable_output``): the finish
comes after it is writable again, and every image must then be in place.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.redis_server import RedisServer
from tests.unwritable import unwritable

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")

# Where a process may be killed "at the worst moment": fault points in the product.
KILL_POINTS = {
    "coordinator": [
        "results.staged",
        "results.committed",
        "coordinator.event_handled",
        "coordinator.before_enqueue",
    ],
    "rq": ["worker.result_ready"],
    "local": ["results.staged", "results.committed"],
}
FAULTS = (
    "kill_coordinator",
    "kill_rq_worker",
    "kill_local_worker",
    "kill_at_point",
    "redis_outage",
    "redis_restart_empty",
    "redis_errors",
    "second_coordinator",
    "big_submit",
    "cancel_retry_race",
    "disk_full",
    "stop_coordinator",
    "unwritable_output",
)
# The coordinator's lease (seconds) in rounds that stop one: a successor starts once it lapses.
STOP_LEASE = 3


@dataclass
class Outcome:
    seed: int
    jobs: int
    faults: list[str] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    doubled: list[int] = field(default_factory=list)
    wrong_bytes: list[int] = field(default_factory=list)
    orphaned: int = 0
    remade: list[int] = field(default_factory=list)
    verify_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.wrong_bytes or self.orphaned or self.remade)

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.jobs} jobs, faults {self.faults}: lost {self.lost}, "
            f"doubled {self.doubled}, wrong bytes {self.wrong_bytes}, orphaned {self.orphaned}, "
            f"remade {self.remade}"
            + ("" if self.ok else "\n  verify: " + "; ".join(self.verify_lines))
        )


class Cluster:
    """One round's private world and its processes (all killed by ``close``)."""

    def __init__(
        self,
        root: Path,
        *,
        persistent_redis: bool = False,
        coordinator_args: tuple[str, ...] = ("--lost-after", "2", "--window", "6"),
    ) -> None:
        self.root = root
        self.coordinator_args = coordinator_args
        root.mkdir(parents=True, exist_ok=True)
        self.db = root / "orchestrate.db"
        self.out = root / "output"
        self.out_link = root / "output-link"  # the same folder, as local workers name it
        self.out.mkdir(exist_ok=True)
        self.out_link.symlink_to(self.out)
        self.redis = RedisServer(root, appendonly=persistent_redis)
        self.redis.start()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
        self.env.update(
            ORCHESTRATE_DB=str(self.db),
            ORCHESTRATE_OUTPUT=str(self.out),
            ORCHESTRATE_REDIS_URL=self.redis.url,
            PYTHONPATH=str(REPO),
        )
        self.cancelled_batches: set[int] = set()
        self.notes: list[str] = []  # how faults were made, for the round's record
        self._store: Any = None

    # -- processes -------------------------------------------------------------------------------

    def _start(self, name: str, args: list[str], faults: str = "") -> subprocess.Popen[bytes]:
        env = dict(self.env)
        if faults:
            env["ORCHESTRATE_FAULTS"] = faults
        with open(self.logs / f"{name}.log", "ab") as fh:
            proc = subprocess.Popen(args, cwd=self.root, env=env, stdout=fh, stderr=fh)
        self.procs[name] = proc
        return proc

    def orchestrate(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        proc = subprocess.run(
            [ORCHESTRATE, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"orchestrate {' '.join(args)}: {proc.returncode}\n{proc.stderr}")
        return proc.stdout + proc.stderr

    def coordinator(self, name: str = "coordinator", faults: str = "", *extra: str) -> Any:
        return self._start(
            name,
            [ORCHESTRATE, "coordinator", *self.coordinator_args, *extra],
            faults,
        )

    def rq_worker(self, name: str, faults: str = "", *extra: str) -> Any:
        args = [PYTHON, "-m", "tests.chaos.agents", "rq", self.redis.url, name, *extra]
        return self._start(name, args, faults)

    def local_worker(self, name: str, faults: str = "", *extra: str) -> Any:
        db_url = f"sqlite:///{self.db}"
        args = [
            PYTHON,
            "-m",
            "tests.chaos.agents",
            "local",
            db_url,
            str(self.out_link),
            name,
            *extra,
        ]
        return self._start(name, args, faults)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(60)

    def stop(self, name: str, timeout: float = 120) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)  # one a `stop` fault left stopped hears it too
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self, timeout: float = 120) -> None:
        """SIGTERM to every process at once, then wait for each (killing the slow ones)."""
        live = [p for p in self.procs.values() if p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
            p.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + timeout
        for p in live:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        self.redis.stop()
        if self._store is not None:
            self._store.engine.dispose()

    # -- the database --------------------------------------------------------------------------

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.db, timeout=60)) as conn:
            return conn.execute(sql, args).fetchall()

    def store(self) -> Any:
        from orchestrator.database import database_url, open_engine
        from orchestrator.store import JobStore

        if self._store is None:
            self._store = JobStore(open_engine(database_url(str(self.db))))
        return self._store

    def submit(self, rows: int, *, seed: int, priority: int = 0) -> int | None:
        """Submit ``rows`` jobs (in this process, as ``orchestrate submit`` does)."""
        from orchestrator.manifest import parse_manifest

        text = "prompt,seed,priority\n" + "".join(
            f"chaos {seed} {i},{i},{priority}\n" for i in range(rows)
        )
        manifest = parse_manifest(text, "chaos.csv", native_size=lambda _m: (64, 64))
        return self.store().submit(manifest, name="chaos", defaults={}, max_attempts=50).batch_id

    def active(self) -> int:
        return self.query(
            "SELECT count(*) FROM jobs WHERE status IN ('pending', 'queued', 'running', 'loading')"
        )[0][0]

    def wait_quiet(self, timeout: float, until: Any = None) -> bool:
        """Wait until no job is active (True), or ``until()`` holds, or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.active() == 0:
                return True
            if until is not None and until():
                return False
            time.sleep(0.2)
        return False

    # -- the end of a round ----------------------------------------------------------------------

    def finish(self, timeout: float = 240) -> None:
        """No more faults: a clean coordinator and workers finish every job, then everything
        stops (the coordinator and local workers tidy up as they stop)."""
        if self.active():
            for name in [n for n in self.procs if n.startswith("coordinator")]:
                self.stop(name)
            self.coordinator("coordinator-final")
            self.rq_worker("rq-final")
            self.local_worker("local-final")
        done = self.wait_quiet(timeout)
        self.stop_all()
        if not done:
            raise AssertionError(f"jobs still active after {timeout}s:\n{self.tails()}")

    def tails(self) -> str:
        out = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace")[-1500:]
            out.append(f"--- {log.name}\n{text}")
        return "\n".join(out)

    def check(self, outcome: Outcome) -> Outcome:
        rows = self.query(
            "SELECT id, batch_id, status, output_path, output_sha256, published_at FROM jobs"
        )
        succeeded = {
            job: (n, sha)
            for job, n, sha in self.query(
                "SELECT job_id, count(*), max(output_sha256) FROM attempts "
                "WHERE status = 'succeeded' GROUP BY job_id"
            )
        }
        for job, batch, status, path, sha, published in rows:
            if batch in self.cancelled_batches:
                continue
            if status != "succeeded":
                outcome.lost.append(job)
                continue
            n, attempt_sha = succeeded.get(job, (0, None))
            if n != 1:
                outcome.doubled.append(job)
            data = Path(path).read_bytes() if path and Path(path).is_file() else b""
            if not (published and sha == attempt_sha == hashlib.sha256(data).hexdigest()):
                outcome.wrong_bytes.append(job)
        # A result recorded and then lost (its image gone before publishing): made again.
        outcome.remade = [
            job
            for (job,) in self.query(
                "SELECT DISTINCT job_id FROM attempts "
                "WHERE status = 'lost' AND output_sha256 IS NOT NULL"
            )
        ]
        from orchestrator.verify import verify

        report = verify(self.store(), self.out)
        outcome.verify_lines = report.lines()
        outcome.orphaned = report.problems
        if report.clean:
            # The same folder through its other name: a repair finds nothing to mend.
            before = {p: p.stat().st_ino for p in self.out.rglob("*.png")}
            again = verify(self.store(), self.out_link, repair=True)
            after = {p: p.stat().st_ino for p in self.out.rglob("*.png")}
            if again.repaired or before != after:
                outcome.orphaned += max(1, sum(again.repaired.values()))
                outcome.verify_lines = again.lines()
        return outcome


# -- a seeded round ------------------------------------------------------------------------------


def run_round(
    root: Path,
    seed: int,
    *,
    jobs: int = 40,
    outage_s: tuple[float, float] = (2, 4),
    faults: int | None = None,
    window_s: float = 3.0,
    only: list[str] | None = None,
) -> Outcome:
    """One seeded round: ``faults`` (2-4) of FAULTS (or exactly ``only``) at random moments in
    the first ``window_s`` seconds of the work, then a clean finish and the invariants."""
    rng = random.Random(seed)
    chosen = list(only) if only is not None else rng.sample(FAULTS, faults or rng.randint(2, 4))
    persistent = "redis_outage" in chosen
    t0 = time.monotonic()
    cluster = Cluster(root, persistent_redis=persistent)
    if "stop_coordinator" in chosen:
        cluster.coordinator_args += ("--lease", str(STOP_LEASE))
    outcome = Outcome(seed=seed, jobs=jobs, faults=list(chosen))
    try:
        cluster.submit(jobs, seed=seed)
        point_faults = {"coordinator": "", "rq-1": "", "local-1": ""}
        if "kill_at_point" in chosen:
            who = rng.choice(["coordinator", "rq-1", "local-1"])
            kind = who.split("-")[0] if who != "coordinator" else "coordinator"
            point = rng.choice(KILL_POINTS[kind])
            point_faults[who] = f"{point}=kill@{rng.randint(1, 4)}"
            outcome.faults.append(f"{who}:{point_faults[who]}")
        if "stop_coordinator" in chosen:
            taken = point_faults["coordinator"].partition("=")[0]
            point = rng.choice([p for p in KILL_POINTS["coordinator"] if p != taken])
            spec = f"{point}=stop@{rng.randint(1, 3)}"
            point_faults["coordinator"] = ";".join(
                filter(None, [point_faults["coordinator"], spec])
            )
            outcome.faults.append(f"coordinator:{spec}")
        if "redis_errors" in chosen:
            who = rng.choice(["coordinator", "rq-1"])
            spec = f"redis:*=error@{rng.randint(2, 60)}"
            point_faults[who] = ";".join(filter(None, [point_faults[who], spec]))
            outcome.faults.append(f"{who}:{spec}")
        cluster.coordinator("coordinator", point_faults["coordinator"])
        cluster.rq_worker("rq-1", point_faults["rq-1"])
        cluster.rq_worker("rq-2")
        local_extra = ["--big", "--fsize", "1500000"] if "disk_full" in chosen else []
        cluster.local_worker("local-1", point_faults["local-1"], *local_extra)
        _inject(cluster, rng, chosen, outage_s, window_s)
        outcome.faults.extend(cluster.notes)
        cluster.finish()
        cluster.check(outcome)
    finally:
        cluster.close()
        outcome.seconds = time.monotonic() - t0
    return outcome


def seed_of(rng: random.Random) -> int:
    return rng.randint(10**6, 10**9)


def _inject(
    cluster: Cluster,
    rng: random.Random,
    chosen: list[str],
    outage_s: tuple[float, float],
    window_s: float,
) -> None:
    """Apply the round's faults at random moments while the work goes on."""
    events = sorted((rng.uniform(0.3, window_s), f) for f in chosen)
    start = time.monotonic()
    for at, fault in events:
        time.sleep(max(0.0, start + at - time.monotonic()))
        if fault == "kill_coordinator":
            cluster.kill("coordinator")
            time.sleep(rng.uniform(0.1, 1.0))
            cluster.coordinator("coordinator-2")
        elif fault == "stop_coordinator":
            take_over_stopped(cluster, "coordinator", "coordinator-t")
        elif fault == "kill_rq_worker":
            cluster.kill("rq-2")
            cluster.rq_worker("rq-3")
        elif fault == "kill_local_worker":
            cluster.kill("local-1")
            cluster.local_worker("local-2")
        elif fault in ("redis_outage", "redis_restart_empty"):
            # persistent: Redis comes back with its data (AOF); otherwise empty
            cluster.redis.stop()
            time.sleep(rng.uniform(*outage_s))
            cluster.redis.start()
        elif fault == "second_coordinator":
            # Refused while the first lives; takes over if the first is dead and its lease gone.
            second = cluster.coordinator("coordinator-b")
            time.sleep(1.5)
            log = (cluster.logs / "coordinator-b.log").read_text()
            if second.poll() is not None and "another coordinator runs" not in log:
                raise AssertionError(f"a second coordinator failed otherwise:\n{log}")
        elif fault == "big_submit":
            # Chunked, invisible until complete, then cancelled whole (chunked too).
            batch = cluster.submit(20_000, seed=seed_of(rng), priority=-1)
            assert batch is not None
            cluster.cancelled_batches.add(batch)
            cluster.store().cancel(batch_id=batch)
        elif fault == "cancel_retry_race":
            running = [
                r[0]
                for r in cluster.query(
                    "SELECT id FROM jobs WHERE status IN ('running', 'queued') LIMIT 3"
                )
            ]
            if running:
                cluster.store().cancel(running)
                cluster.store().retry(running)
        elif fault == "unwritable_output":
            # The whole output folder (staging and batch folders too) read-only for a while,
            # once work is under way: it pauses or waits to be published, and all of it
            # lands once the folder is writable again.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not cluster.query(
                "SELECT 1 FROM jobs WHERE status = 'succeeded' LIMIT 1"
            ):
                time.sleep(0.05)
            with unwritable(cluster.out, recursive=True) as how:
                cluster.notes.append(f"unwritable_output:{how}")
                time.sleep(rng.uniform(*outage_s))
        elif fault == "disk_full":
            time.sleep(rng.uniform(0.5, 1.5))
            proc = cluster.procs.get("local-1")
            if proc is not None and proc.poll() is None:
                import resource

                resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP), not running or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return False  # gone
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return out.stdout.strip().startswith("T")


def take_over_stopped(cluster: Cluster, name: str, taker: str, timeout: float = 90) -> bool:
    """A slow coordinator taken over: ``name`` has stopped itself at a fault point (``stop``);
    once its lease has lapsed, ``taker`` starts and takes the lease (unless another already
    did); then ``name`` is woken (SIGCONT) beside it, and must notice and exit with "lost its
    lease", having recorded nothing (no job event in its log) since it woke. False when
    ``name`` died or finished before it stopped."""
    proc = cluster.procs[name]
    log = cluster.logs / f"{name}.log"
    deadline = time.monotonic() + timeout
    while not _stopped(proc.pid):
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never stopped at its fault point:\n{cluster.tails()}")
        time.sleep(0.05)
    said = log.stat().st_size  # all it wrote before it stopped
    try:
        while True:
            ((pid, expires_at),) = cluster.query("SELECT pid, expires_at FROM coordinator")
            if pid != proc.pid:
                break  # taken over
            if taker not in cluster.procs and expires_at < time.time():
                cluster.coordinator(taker)
            started = cluster.procs.get(taker)
            if started is not None and started.poll() is not None:
                raise AssertionError(f"{taker} could not take over:\n{cluster.tails()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nobody took over from {name}:\n{cluster.tails()}")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGCONT)  # woken while its successor starts its first tick
    try:
        code = proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name}, taken over and woken, went on:\n{cluster.tails()}") from None
    woken = log.read_bytes()[said:].decode(errors="replace")
    if code != 1 or "lost its lease" not in woken:
        raise AssertionError(f"{name}, taken over, exited {code}:\n{woken[-3000:]}")
    recorded = re.findall(r"^\[\d+/\d+\] job .*$", woken, flags=re.MULTILINE)
    if recorded:
        raise AssertionError(f"{name}, woken beside its successor, recorded: {recorded}")
    return True
