"""A worker pointed at a Redis that does not answer says, again and again at a growing
interval, what it tried and for how long, and when the host name does not resolve."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.e2e.test_worker_signals import stopped_in_time
from tests.helpers import Cli, wait_until
from tests.redis_server import free_port

pytestmark = pytest.mark.slow


def _waiting_lines(cli: Cli, tmp_path: Path, url: str, log: str, lines: int) -> str:
    """What a worker pointed at ``url`` prints until it has said it is waiting ``lines``
    times (then it is stopped)."""
    cli.env["ORCHESTRATE_REDIS_URL"] = url
    proc = cli.popen("worker", log=log)
    try:
        wait_until(
            lambda: (tmp_path / log).read_text().count("still waiting") >= lines - 1,
            "the waiting message to repeat",
            timeout=120,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert stopped_in_time(proc, tmp_path / log) != 0  # it never connected: exit 1
    return (tmp_path / log).read_text()


def test_an_unresolvable_redis_host_is_named_as_a_likely_typo(cli: Cli, tmp_path: Path) -> None:
    out = _waiting_lines(cli, tmp_path, "redis://:s3cret@nohost.invalid:6379/0", "dns.log", 2)
    assert "nohost.invalid:6379" in out
    # (where no DNS server answers at all, the lookup fails as "could not be looked up")
    assert "its host name does not resolve, most likely a typo" in out or (
        "its host name could not be looked up" in out
    )
    assert "still waiting" in out and "s3cret" not in out
    assert "Traceback" not in out


def test_a_refused_redis_port_repeats_what_was_tried_and_for_how_long(
    cli: Cli, tmp_path: Path
) -> None:
    port = free_port()  # nobody listens there
    out = _waiting_lines(cli, tmp_path, f"redis://:pw@127.0.0.1:{port}/0", "refused.log", 2)
    assert f"127.0.0.1:{port}" in out
    assert "does not resolve" not in out
    lines = [line for line in out.splitlines() if "waiting" in line]
    assert len(lines) >= 2, out
    assert re.search(rf"still waiting for Redis at 127\.0\.0\.1:{port} after \d+s: ", lines[-1])
    assert lines[-1].endswith("Connection refused"), lines[-1]
    assert "pw@" not in out and "Traceback" not in out
