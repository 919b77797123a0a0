from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")


class Cli:
    """Runs ``orchestrate`` as a user types it, in a temporary working directory."""

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
        if check is not None and proc.returncode != check:
            raise AssertionError(
                f"orchestrate {' '.join(args)} exited {proc.returncode}, expected {check}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def popen(self, *args: str, log: str = "worker.log") -> subprocess.Popen[bytes]:
        """Start it in the background, its output going to ``log`` in the working directory."""
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


@pytest.fixture
def cli(tmp_path: Path, model_cache: Path) -> Iterator[Cli]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
    env["ORCHESTRATE_CACHE"] = str(model_cache)
    env.pop("PYTEST_CURRENT_TEST", None)
    runner = Cli(tmp_path, env)
    yield runner
    runner.kill_all()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


Writer = Callable[[Path, str], Path]
