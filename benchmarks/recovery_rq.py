"""How long a SIGKILLed worker's job takes to come back, with the default settings.

    python benchmarks/recovery_rq.py

Starts a redis-server, a coordinator and a worker (`orchestrate` processes, tiny model, a job
long enough to kill mid-way), SIGKILLs the worker mid-job, starts another, and reports the
seconds from the kill to the job's re-dispatch (its attempt marked lost) and to its success.
Expected: about 3 x --heartbeat (5 s) for the heartbeat key to expire, plus --lost-after (5 s).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from _common import ROOT, save

sys.path.insert(0, str(ROOT))
from tests.redis_server import RedisServer

ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")


def query(db: Path, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    with closing(sqlite3.connect(db)) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = RedisServer(tmp)
        server.start()
        env = {**os.environ, "ORCHESTRATE_REDIS_URL": server.url}
        (tmp / "j.csv").write_text(
            "prompt,seed,steps,width,height,num_images\nslow,1,60,192,192,2\n"
        )
        db = tmp / "orchestrate.db"
        log = open(tmp / "log.txt", "ab")  # noqa: SIM115

        def run(*args: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen([ORCHESTRATE, *args], cwd=tmp, env=env, stdout=log, stderr=log)

        subprocess.run(
            [ORCHESTRATE, "submit", "j.csv"], cwd=tmp, env=env, check=True, capture_output=True
        )
        coord = run("coordinator", "--until-done")
        victim = run("worker", "--name", "victim")
        try:
            while not query(db, "SELECT id FROM jobs WHERE status = 'running'"):
                time.sleep(0.05)
            (job,) = query(db, "SELECT id FROM jobs WHERE status = 'running'")[0]
            time.sleep(1.0)
            victim.send_signal(signal.SIGKILL)
            killed = time.time()
            rescuer = run("worker", "--name", "rescuer")
            coord.wait(600)
            rescuer.send_signal(signal.SIGTERM)
            rescuer.wait(60)
            (lost_at,) = query(
                db, f"SELECT finished_at FROM attempts WHERE job_id = {job} AND status = 'lost'"
            )[0]
            (done_at,) = query(db, f"SELECT finished_at FROM jobs WHERE id = {job}")[0]
            statuses = query(db, "SELECT status, count(*) FROM jobs GROUP BY status")
        finally:
            for p in (coord, victim):
                if p.poll() is None:
                    p.kill()
            server.stop()
    print(
        f"SIGKILL mid-job -> job dispatched again after {lost_at - killed:.1f} s, "
        f"succeeded on another worker after {done_at - killed:.1f} s; jobs: {statuses}"
    )
    save(
        "recovery_rq",
        {
            "redispatch_s": lost_at - killed,
            "succeeded_s": done_at - killed,
            "statuses": statuses,
            "heartbeat_s": 5,
            "lost_after_s": 5,
        },
    )


if __name__ == "__main__":
    main()
