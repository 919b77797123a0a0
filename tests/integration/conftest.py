"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from workers.task import PipelineCache


@pytest.fixture(scope="module")
def tiny() -> object:
    """The built-in tiny model through the diffusers backend on the CPU (2 threads), loaded
    once per module (a module may define its own ``tiny``)."""
    backend, _ = PipelineCache(device="cpu", threads=2).get("tiny")
    return backend
