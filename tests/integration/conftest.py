"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from workers.task import PipelineCache


@pytest.fixture(scope="module")
def tiny() -> object:
    """The built-in tiny model through the diffusers backend on the CPU (1 thread, its default), loaded
    once per module (a module may define its own ``tiny``)."""
    backend, _ = PipelineCache(device="cpu", threads=1).get("tiny")
    return backend


@pytest.fixture(scope="session")
def tiny_coreml(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_coreml(precision)``: the built-in tiny model converted to Core ML packages
    (``convert_pipeline``'s folder), made once for the whole run and shared by the test
    processes (pytest-xdist's workers take turns under a file lock). Read-only: a test that
    changes a folder copies it first."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's folder, above each worker's own

    def folder(precision: str) -> Path:
        out = shared / f"tiny-coreml-{precision}"
        with FileLock(str(out) + ".lock"):
            if not out.exists():  # convert_pipeline writes it atomically
                from workers.compression.coreml import convert_pipeline

                backend, _ = PipelineCache(device="cpu", threads=1).get("tiny")
                convert_pipeline(backend.pipe, out, model_version="tiny", precision=precision)
        return out

    return folder
