"""`orchestrate pause`, `resume` and `jobs priority` as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Cli, write

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)


def test_pause_run_resume_and_priority(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "prompt,seed,steps\na1,1,2\na2,2,2\n")
    write(tmp_path / "b.csv", "prompt,seed,steps\nb1,3,2\n")
    cli("submit", "a.csv")
    cli("submit", "b.csv")

    out = cli("pause", "--batch", "1").stdout
    assert out.startswith("batch 1 is paused: no new job of it starts (2 jobs waiting)")
    assert "batch 1 was already paused" in cli("pause", "--batch", "1").stdout
    status = cli.json("status")
    assert [b["id"] for b in status["paused"]["batches"]] == [1]
    assert status["batches"][0]["paused_at"] is not None
    assert "Batch 1 (a.csv) paused" in cli("status", "--plain").stdout

    # run does batch 2, then stops (no endless wait) and says what is left paused
    run = cli("run", check=1)
    assert "1/3 succeeded" in run.stdout
    assert "2 jobs left waiting: paused batch 1; `orchestrate resume --batch 1`" in run.stderr
    jobs = {j["id"]: j for j in cli.json("jobs", "list")}
    assert [jobs[i]["status"] for i in (1, 2, 3)] == ["pending", "pending", "succeeded"]

    # priority: only pending jobs, negative values, how many changed
    assert cli("jobs", "priority", "2", "7").stdout.strip() == (
        "1 job now at priority 7 (only pending jobs change)"
    )
    assert cli("jobs", "priority", "3", "7").stdout.startswith("0 jobs")  # succeeded: kept
    assert cli("jobs", "priority", "--batch", "1", "-2").stdout.startswith("2 jobs")
    assert cli.json("jobs", "priority", "--batch", "1", "-2") == {"changed": 0, "priority": -2}

    # user mistakes: one line, exit 2, no traceback
    for args, message in (
        (("pause", "--batch", "9"), "error: no batch 9"),
        (("resume", "--batch", "9"), "error: no batch 9"),
        (("jobs", "priority", "99", "1"), "error: no job with id 99"),
        (("jobs", "priority", "--batch", "9", "1"), "error: no batch 9"),
        (("jobs", "priority", "1", "5000000"), "error: priority must be between"),
        (("jobs", "priority", "3"), "error: name job ids, or --batch"),
    ):
        proc = cli(*args, check=2)
        assert proc.stderr.startswith(message), (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    bad = cli("jobs", "priority", "1", "high", check=2)
    assert "'high' is not a valid integer" in bad.stderr and "Traceback" not in bad.stderr

    # the whole queue: pausing it holds back batch 1 even once it is resumed itself
    assert cli("pause").stdout.startswith("the queue is paused")
    assert "but the whole queue is paused" in cli("resume", "--batch", "1").stdout
    run = cli("run", check=1)
    assert "the queue is paused; `orchestrate resume`" in run.stderr
    assert cli("resume").stdout.strip() == "the queue is running again"
    run = cli("run")
    assert "3/3 succeeded" in run.stdout
