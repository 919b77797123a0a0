"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.task import PipelineCache


@pytest.fixture(scope="module")
def tiny() -> object:
    """The built-in tiny model through the diffusers backend on the CPU (1 thread, its default), loaded
    once per module (a module may define its own ``tiny``)."""
    backend, _ = PipelineCache(device="cpu", threads=1).get("tiny")
    return backend


def shared_conversions(
    tmp_path_factory: pytest.TempPathFactory, model: str, make_pipe: Callable[[Path], Any]
) -> Callable[[str], Path]:
    """``folder(precision)``: ``make_pipe(scratch)``'s pipeline converted to Core ML packages
    (``convert_pipeline``'s folder), made once for the whole run and shared by the test
    processes (pytest-xdist's workers take turns under a file lock)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's folder, above each worker's own

    def folder(precision: str) -> Path:
        out = shared / f"{model}-coreml-{precision}"
        with FileLock(str(out) + ".lock"):
            if not out.exists():  # convert_pipeline writes it atomically
                from workers.compression.coreml import convert_pipeline

                pipe = make_pipe(shared / f"{model}-scratch-{os.getpid()}")
                convert_pipeline(pipe, out, model_version=model, precision=precision)
        return out

    return folder


@pytest.fixture(scope="session")
def tiny_coreml(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_coreml(precision)``: the built-in tiny model converted to Core ML packages, once
    for the whole run (``shared_conversions``). Read-only: a test that changes a folder copies
    it first."""

    def tiny(_scratch: Path) -> Any:
        return PipelineCache(device="cpu", threads=1).get("tiny")[0].pipe

    return shared_conversions(tmp_path_factory, "tiny", tiny)


@pytest.fixture(scope="session")
def dummy_coreml(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``dummy_coreml(precision)``: the random-weight dummy pipeline (tests/dummy_pipeline.py,
    the same weights in every process) converted to Core ML packages, once for the whole run.
    Read-only, as ``tiny_coreml``'s."""
    from tests.dummy_pipeline import dummy_pipe

    return shared_conversions(tmp_path_factory, "dummy", dummy_pipe)
