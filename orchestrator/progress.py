"""Progress of a run: a bar on a terminal, plain log lines otherwise.

Bars are rich's, the library that also draws ``status``: one way to draw progress.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from contract.status import FINAL_STATUSES, JobStatus
from orchestrator.events import JobEvent


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Jobs done of total, images per minute and ETA, fed by worker events."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.counts = counts
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.made = 0
        self._bar: Bar | None = None
        c = counts()
        self.initial_done = sum(c[s] for s in FINAL_STATUSES)
        if self.tty:
            self._bar = Bar("", unit="img", stream=self.stream)
            self._bar.update(self.initial_done, sum(c.values()))

    def rate_per_minute(self) -> float:
        elapsed = time.monotonic() - self.started
        return 60.0 * self.made / elapsed if elapsed > 0 else 0.0

    def __call__(self, event: JobEvent) -> None:
        if event.status == JobStatus.SUCCEEDED:
            self.made += 1
        c = self.counts()
        total = sum(c.values())
        done = sum(c[s] for s in FINAL_STATUSES)
        rate = self.rate_per_minute()
        eta = (total - done) / rate * 60 if rate > 0 else None
        if self._bar is not None:
            self._bar.update(done, total, f"{rate:.1f} img/min, {c[JobStatus.FAILED]} failed")
        else:
            what = event.status
            if event.status == "retrying" and event.retry_in is not None:
                what = f"failed, retrying in {event.retry_in:.0f}s,"
            line = (
                f"[{done}/{total}] job {event.job_id} {what} after {event.seconds:.2f}s"
                f" | {rate:.1f} img/min | ETA {format_eta(eta)}"
            )
            if event.error:
                line += f" | {event.error}"
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Bar:
    """A bar on a terminal: what, done of total, elapsed and remaining time, and a note.

    Drawn when ``update`` is called (first on the first), never by a thread of its own."""

    def __init__(self, description: str, *, unit: str, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=Console(file=stream or sys.stderr),
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._progress.add_task(description, total=None, note="")
        self._started = False

    def update(self, done: int, total: int | None, note: str = "") -> None:
        self._progress.update(self._task, completed=done, total=total, note=note)
        if self._started:
            self._progress.refresh()
        else:
            self._progress.start()  # draws it
            self._started = True

    def close(self) -> None:
        self._progress.stop()
