"""What a transport tells the command that runs it, one event per finished try of a job: the
progress bar and the log lines read these, whichever transport produced them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobEvent:
    job_id: int
    # succeeded | unpublished (succeeded, its image not in place yet) | failed | retrying |
    # released | lost | superseded | cancelled
    status: str
    seconds: float  # how long the try ran, from its attempt's start
    output_path: str | None = None
    error: str | None = None
    retry_in: float | None = None  # for "retrying": seconds until the next try may start
