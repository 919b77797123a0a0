"""The ``cli`` fixture: ``orchestrate`` as a user types it, in the test's temporary folder.

A module that sets ``IN_PROCESS = True`` runs its commands in-process (``InProcessCli``: no
interpreter start per command); a test of it marked ``@pytest.mark.subprocess`` still runs each
command as a process of its own. ``cli.popen`` always starts a process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import ORCHESTRATE, Cli, cli_for, write
from tests.redis_server import RedisServer

__all__ = ["ORCHESTRATE", "Cli", "Writer", "cli", "rcli", "write"]


def in_process(request: pytest.FixtureRequest) -> bool:
    return (
        bool(getattr(request.module, "IN_PROCESS", False))
        and request.node.get_closest_marker("subprocess") is None
    )


@pytest.fixture
def cli(request: pytest.FixtureRequest, tmp_path: Path, model_cache: Path) -> Iterator[Cli]:
    runner = cli_for(tmp_path, model_cache, in_process=in_process(request))
    yield runner
    runner.kill_all()


Writer = Callable[[Path, str], Path]


@pytest.fixture
def rcli(cli: Cli, redis_server: RedisServer) -> Cli:
    """``cli`` with ``ORCHESTRATE_REDIS_URL`` set to this test's Redis."""
    cli.env["ORCHESTRATE_REDIS_URL"] = redis_server.url
    return cli
