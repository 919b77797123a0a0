"""The service files in deploy/ name real commands and flags."""

from __future__ import annotations

import plistlib

from click.testing import CliRunner

from orchestrator.cli.common import main
from tests.conftest import REPO


def flags_of(command: str) -> str:
    return CliRunner().invoke(main, [command, "--help"]).output


def test_launchd_plist_is_valid_and_runs_a_worker() -> None:
    plist = plistlib.loads((REPO / "deploy" / "com.example.orchestrate-worker.plist").read_bytes())
    args = plist["ProgramArguments"]
    assert args[0].endswith("/.venv/bin/orchestrate") and args[1] == "worker"
    help_text = flags_of("worker")
    for flag in (a for a in args[2:] if a.startswith("--")):
        assert flag in help_text
    assert plist["KeepAlive"] is True
    assert "ORCHESTRATE_REDIS_URL" in plist["EnvironmentVariables"]


def test_systemd_units_use_existing_flags() -> None:
    for unit, command in (
        ("orchestrate-worker.service", "worker"),
        ("orchestrate-coordinator.service", "coordinator"),
    ):
        text = (REPO / "deploy" / unit).read_text()
        (exec_start,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
        words = exec_start.split()
        assert words[1] == command
        help_text = flags_of(command)
        for flag in (w for w in words if w.startswith("--")):
            assert flag in help_text
