"""How a run's end becomes its exit status (``orchestrator.run.RunReport``), without a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.status import JobStatus
from orchestrator.run import RunReport


def report(stopped: bool = False, unpublished: int = 0, **counts: int) -> RunReport:
    by_status = {s.value: 0 for s in JobStatus}
    by_status.update(counts)
    return RunReport(by_status, Path("out"), stopped, {"count": unpublished})


@pytest.mark.parametrize(
    ("run", "code"),
    [
        (report(succeeded=3), 0),
        (report(succeeded=2, cancelled=1), 0),  # a job the user cancelled is no failure
        (report(succeeded=2, failed=1), 1),
        (report(succeeded=2, pending=1), 1),  # paused jobs left waiting
        (report(succeeded=3, unpublished=1), 1),  # an image not in place yet
        (report(stopped=True, succeeded=2, pending=1), 130),
        (report(stopped=True, succeeded=3, unpublished=1), 130),
        (report(stopped=True, succeeded=3), 0),  # stopped, but nothing was left
        (report(), 0),  # an empty queue
    ],
)
def test_the_exit_status_of_a_run(run: RunReport, code: int) -> None:
    assert run.exit_code() == code


def test_the_totals() -> None:
    r = report(succeeded=2, cancelled=1, failed=4)
    assert (r.total, r.finished) == (7, 3)
