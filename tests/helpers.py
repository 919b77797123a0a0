"""Helpers the test modules share: ``orchestrate`` run as a subprocess (``Cli``) or in-process
through click's ``CliRunner`` (``InProcessCli``, the same interface), the job database read in
plain SQL, and polling waits."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def cli_env(model_cache: Path) -> dict[str, str]:
    """The environment a test's ``orchestrate`` sees: this one without ``ORCHESTRATE_*`` (the
    user's settings), with the session's model cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
    env["ORCHESTRATE_CACHE"] = str(model_cache)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


# -- the job database, read as a user would ------------------------------------------------


def query(db: Path, sql: str, *args: object) -> list[tuple]:  # type: ignore[type-arg]
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, args).fetchall()


def running_job(db: Path) -> int | None:
    try:
        rows = query(db, "SELECT id FROM jobs WHERE status = 'running'")
    except sqlite3.OperationalError:  # not created yet
        return None
    return rows[0][0] if rows else None


def wait_until(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    """Poll ``check`` until it returns something true (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_running(db: Path, timeout: float = 60) -> int:
    """The id of a job that is running (the first seen), waiting for one to start."""
    return int(wait_until(lambda: running_job(db), "a job to start running", timeout))


def exactly_once(db: Path, n: int) -> None:
    """Jobs 1..n all succeeded, each with exactly one succeeded attempt."""
    assert query(db, "SELECT status, count(*) FROM jobs GROUP BY status") == [("succeeded", n)]
    per_job = query(
        db, "SELECT job_id, count(*) FROM attempts WHERE status = 'succeeded' GROUP BY job_id"
    )
    assert sorted(per_job) == [(i, 1) for i in range(1, n + 1)]


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """SIGTERM each one still running, then wait (a minute at most, then kill)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# -- orchestrate as a user types it --------------------------------------------------------


class Cli:
    """Runs ``orchestrate`` as a user types it, in a temporary working directory, each command
    a process of its own. ``env`` may be changed between calls."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def __call__(
        self, *args: str, check: int | None = 0, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [ORCHESTRATE, *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return self._checked(proc, args, check)

    @staticmethod
    def _checked(
        proc: subprocess.CompletedProcess[str], args: tuple[str, ...], check: int | None
    ) -> subprocess.CompletedProcess[str]:
        if check is not None and proc.returncode != check:
            raise AssertionError(
                f"orchestrate {' '.join(args)} exited {proc.returncode}, expected {check}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def popen(self, *args: str, log: str = "worker.log") -> subprocess.Popen[bytes]:
        """Start it in the background (always a process: it may be signalled or killed), its
        output going to ``log`` in the working directory."""
        with open(self.cwd / log, "ab") as fh:
            proc = subprocess.Popen(
                [ORCHESTRATE, *args], cwd=self.cwd, env=self.env, stdout=fh, stderr=fh
            )
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        """Every process this test started, gone when it ends, pass or fail."""
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


class InProcessCli(Cli):
    """``Cli`` with each command run in this process through click's ``CliRunner`` (the console
    script's own entry point, ``orchestrator.cli:cli``): no interpreter start and no torch
    import per command. The result has a subprocess's shape (``returncode``, ``stdout``,
    ``stderr``); for the call, the environment is exactly ``env`` and the working directory
    ``cwd``, and what a command leaves in the process (logging handlers, signal handlers, torch's
    thread count, module caches, the fault rules) is put back after it. ``popen`` still starts a
    process. A command that hangs hangs the test: what needs a signal, a kill or a timeout is
    run with ``Cli``."""

    def __call__(
        self, *args: str, check: int | None = 0, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        from click.testing import CliRunner

        from orchestrator.cli import cli

        runner = CliRunner()
        with self._isolated(), runner.isolation() as (out, err, _):
            try:
                cli(list(args))
                code = 0
            except SystemExit as exc:
                code = _exit_status(exc.code)
            except BaseException:  # as the interpreter would: a traceback, exit 1
                sys.stderr.write(traceback.format_exc())
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            stdout = out.getvalue().decode("utf-8", "replace")
            stderr = err.getvalue().decode("utf-8", "replace")
        proc = subprocess.CompletedProcess([ORCHESTRATE, *args], code, stdout, stderr)
        return self._checked(proc, args, check)

    @contextmanager
    def _isolated(self) -> Iterator[None]:
        environ = dict(os.environ)
        cwd = os.getcwd()
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        root = logging.getLogger()
        root_handlers, root_level = root.handlers[:], root.level
        threads = set(threading.enumerate())
        torch_threads = _torch_threads()
        os.environ.clear()
        os.environ.update(self.env)
        os.chdir(self.cwd)
        # configure_logging's basicConfig must reach this call's stderr, not pytest's handlers
        root.handlers.clear()
        reset_caches()
        try:
            yield
        finally:
            for h in root.handlers[:]:
                root.removeHandler(h)
                h.close()
            root.handlers[:] = root_handlers
            root.setLevel(root_level)
            for name in ("orchestrator", "workers"):
                logging.getLogger(name).setLevel(logging.NOTSET)
            for s, h in handlers.items():
                signal.signal(s, h)
            if torch_threads is not None:
                import torch

                torch.set_num_threads(torch_threads)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(environ)
            reset_caches()
            left = [
                t
                for t in threading.enumerate()
                if t not in threads and not t.daemon and (t.join(10) or t.is_alive())
            ]
            assert not left, f"the command left threads running: {left}"


def _exit_status(code: object) -> int:
    """``sys.exit(code)`` as the process's exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


def reset_caches() -> None:
    """The project's process-wide caches and settings read at import, as a fresh process with
    this environment has them (those of modules loaded)."""
    if (database := sys.modules.get("orchestrator.database")) is not None:
        busy = float(os.environ.get("ORCHESTRATE_BUSY_TIMEOUT", "30"))  # as database.py reads it
        database.BUSY_TIMEOUT_MS = int(busy * 1000)
    if (faults := sys.modules.get("contract.faults")) is not None:
        faults._rules, faults._record, faults._fired = None, None, None  # read again from env
        faults._hits.clear()
    if (models := sys.modules.get("workers.models")) is not None:
        models.native_size.cache_clear()
    if (hub := sys.modules.get("workers.models.hub")) is not None:
        hub._reached.clear()
    if (rq_worker := sys.modules.get("workers.rq.worker")) is not None:
        rq_worker._worker = None


def cli_for(cwd: Path, model_cache: Path, *, in_process: bool = False) -> Cli:
    """A ``Cli`` (or ``InProcessCli``) in ``cwd`` with the test environment."""
    return (InProcessCli if in_process else Cli)(cwd, cli_env(model_cache))
