"""The base install runs the control plane. In a Python where the extras' packages cannot be
imported (as in ``pip install orchestrate-sd`` alone), every module of ``orchestrator`` imports,
``--help``, ``submit``, ``status``, ``jobs list`` and the dashboard work, and a command that needs
an extra refuses in one line naming it, before it touches a job. (.ci/base_install.sh does the
same from a real base install, with a coordinator against Redis.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator import extras

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import contextlib, importlib, io, json, pkgutil, sys

for name in sys.argv[1].split(","):
    sys.modules[name] = None  # as if not installed: import fails, find_spec finds nothing

import orchestrator

for info in pkgutil.walk_packages(orchestrator.__path__, "orchestrator."):
    importlib.import_module(info.name)

from orchestrator.cli import cli

results = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    results.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})

from orchestrator.database import database_url, open_engine
from orchestrator.store import JobStore
from orchestrator.web.app import DashboardApp

app = DashboardApp(JobStore(open_engine(database_url(sys.argv[3]))), refresh_s=0)
got = {}
environ = {"PATH_INFO": "/", "QUERY_STRING": "", "REQUEST_METHOD": "GET", "HTTP_HOST": "127.0.0.1:8080"}
page = b"".join(app(environ, lambda status, headers: got.update(status=status))).decode()
heavy = sorted(m for m in sys.modules if m.partition(".")[0] in sys.argv[1].split(",") and sys.modules[m])
print(json.dumps({"results": results, "page": [got["status"], page], "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("base")
    db = ["--db", str(tmp / "jobs.db"), "--output", str(tmp / "out")]
    manifest = str(REPO / "jobs.example.csv")
    commands = [
        ["--help"],
        [*db, "submit", manifest],
        [*db, "status"],
        [*db, "jobs", "list"],
        [*db, "run", manifest],
        [*db, "generate", "a red circle", "-o", str(tmp / "one.png")],
        [*db, "export", "--format", "parquet", str(tmp / "export")],
        [*db, "export", "--format", "webdataset", str(tmp / "export")],
        [*db, "model", "convert", "--model", "tiny", "--out", str(tmp / "coreml")],
        ["judge", manifest],
        [*db, "jobs", "list", "--status", "failed"],
    ]
    blocked = ",".join(m for mods in extras.EXTRAS.values() for m in mods)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, blocked, json.dumps(commands), str(tmp / "jobs.db")],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    data["by"] = {
        " ".join(r["argv"][4:] if r["argv"][0] == "--db" else r["argv"]): r for r in data["results"]
    }
    return data


def _result(base: dict[str, Any], start: str) -> dict[str, Any]:
    return next(r for k, r in base["by"].items() if k.startswith(start))


def test_the_control_plane_runs_without_the_extras(base: dict[str, Any]) -> None:
    assert base["heavy"] == []  # nothing of an extra was imported
    assert _result(base, "--help")["code"] == 0
    submit = _result(base, "submit")
    assert (submit["code"], submit["err"]) == (0, "")
    assert "11 jobs added" in submit["out"]
    status = _result(base, "status")
    assert status["code"] == 0 and "jobs.example.csv" in status["out"]
    assert _result(base, "jobs list")["out"].count("pending") == 11
    status_line, page = base["page"]
    assert status_line.startswith("200") and "jobs.example.csv" in page
    # imagefolder and webdataset need nothing more: this one only finds nothing to export
    assert "extra" not in _result(base, "export --format webdataset")["err"]


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("run", "diffusers"),
        ("generate", "diffusers"),
        ("export --format parquet", "parquet"),
        ("model convert", "coreml"),
        ("judge", "diffusers"),  # no guard of its own: its first import, named at the top
    ],
)
def test_a_command_that_needs_an_extra_names_it_in_one_line(
    base: dict[str, Any], command: str, extra: str
) -> None:
    r = _result(base, command)
    assert r["code"] == 2
    assert r["out"] == ""
    [line] = r["err"].splitlines()
    assert line.startswith("error: ")
    assert f"needs the {extra} extra (" in line
    assert line.endswith(f"pip install 'orchestrate-sd[{extra}]'")
    if command != "judge":
        assert f"`orchestrate {command.split()[0]}" in line


def test_a_run_refused_for_a_missing_extra_touches_no_job(base: dict[str, Any]) -> None:
    failed = _result(base, "jobs list --status failed")
    assert failed["code"] == 0
    assert " failed " not in failed["out"]
