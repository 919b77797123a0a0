"""The hook runner: completion hooks in a thread of their own, bounded in time and in number."""

from __future__ import annotations

import logging
import os
import shlex
import time
from pathlib import Path

import pytest

from orchestrator.hooks import HookRunner, Hooks


def summary(batch_id: int) -> dict[str, object]:
    return {"event": "batch_done", "batch_id": batch_id, "counts": {"succeeded": 1}}


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_queued_hooks_run_in_order_and_close_waits_for_them(tmp_path: Path) -> None:
    log = shlex.quote(str(tmp_path / "log"))
    runner = HookRunner(Hooks(on_done=f'echo "$ORCHESTRATE_BATCH_ID" >> {log}'))
    assert all(runner.submit(summary(n)) for n in (1, 2, 3))
    runner.close(wait=120)
    assert (tmp_path / "log").read_text().split() == ["1", "2", "3"]
    assert not runner.submit(summary(4))  # closed


def test_a_full_queue_drops_with_a_warning_and_close_kills_a_stuck_hook(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    started, pid = tmp_path / "started", tmp_path / "pid"
    stuck = (
        f"echo $$ > {shlex.quote(str(pid))}; touch {shlex.quote(str(started))}; "
        "while true; do sleep 0.05; done"
    )
    runner = HookRunner(Hooks(on_done=stuck), size=1)
    caplog.set_level(logging.INFO, logger="orchestrator.hooks")
    assert runner.submit(summary(1))
    wait_for(started)  # batch 1's hook runs (and never ends); the queue is empty again
    assert runner.submit(summary(2))  # waits in the queue
    assert not runner.submit(summary(3))  # the queue is full: dropped
    assert runner.dropped == 1
    assert "batch 3's hooks are skipped" in caplog.text
    runner.close(wait=0.5)
    assert "stopping without completion hooks for batches 1, 2" in caplog.text
    shell = int(pid.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(shell, 0)  # killed (and reaped), with what it started


def test_no_hooks_no_thread() -> None:
    runner = HookRunner(Hooks())
    assert not runner.submit(summary(1))
    runner.close()
