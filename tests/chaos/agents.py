"""The processes of a chaos round, with a fake pipeline whose image names its attempt (so a
file written by the wrong attempt is caught): ``python -m tests.chaos.agents rq URL NAME`` or
``... local DB_URL OUTPUT NAME``. Faults come from ``ORCHESTRATE_FAULTS`` in the environment."""

from __future__ import annotations

import argparse
import io
import logging
import random
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from contract.errors import JobInterrupted
from workers.task import PipelineCache, TaskOutput


def image_of(job: dict[str, Any], big: bool) -> bytes:
    """Bytes unique to (job, attempt): a file published by the wrong attempt differs."""
    side = 1000 if big else 16
    img = Image.new("RGB", (side, side), (job["id"] % 256, job["attempt"] % 256, job["seed"] % 256))
    if big:
        img = Image.frombytes(
            "RGB", (side, side), random.Random(job["id"]).randbytes(side * side * 3)
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=0 if big else 6)
    return buf.getvalue()


def runner_for(big: bool, seconds: tuple[float, float]) -> Callable[..., TaskOutput]:
    def run(job: dict[str, Any], _cache: PipelineCache, stop: Callable[[], bool]) -> TaskOutput:
        # Some work to be interrupted in: a few hundredths to a few tenths of a second.
        busy = random.Random(job["id"] * 1000 + job["attempt"]).uniform(*seconds)
        deadline = time.monotonic() + busy
        while time.monotonic() < deadline:
            if stop():
                raise JobInterrupted("stopped")
            time.sleep(0.01)
        return TaskOutput(png=image_of(job, big), result={"total_s": busy, "backend": "fake"})

    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("rq", "local"))
    ap.add_argument("where", nargs="+")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--fsize", type=int, default=None, help="RLIMIT_FSIZE: a full disk")
    ap.add_argument("--min-s", type=float, default=0.02)
    ap.add_argument("--max-s", type=float, default=0.3)
    ap.add_argument("--heartbeat", type=float, default=0.5, help="rq: seconds between beats")
    ap.add_argument("--lease", type=float, default=2.0, help="local: lease seconds")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.fsize:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, hard))
    runner = runner_for(args.big, (args.min_s, args.max_s))
    if args.kind == "rq":
        from workers.rq.worker import run_worker

        url, name = args.where
        run_worker(
            url,
            cache=PipelineCache(),
            runner=runner,
            name=name,
            heartbeat_interval=args.heartbeat,
            heartbeat_ttl=max(1, round(3 * args.heartbeat)),
            block_seconds=1,
        )
    else:
        from orchestrator.config import WorkerSettings
        from orchestrator.database import open_engine
        from orchestrator.store import JobStore
        from orchestrator.transports.local import LocalWorker

        db_url, out, _name = args.where
        store = JobStore(open_engine(db_url))
        settings = WorkerSettings(
            output_dir=Path(out),
            lease_seconds=args.lease,
            poll_seconds=0.05,
            pause_seconds=0.2,
            burst=False,
        )
        LocalWorker(store, settings, cache=PipelineCache(), runner=runner).run()
    sys.exit(0)


if __name__ == "__main__":
    main()
