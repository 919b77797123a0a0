"""Torch threads and OpenMP waits on the real tiny pipeline (issue 12): the thread count
changes the pixels, ``reproduce`` uses the recorded count, and workers wait passively."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.reproduce import compare_pixels, reproduce_image
from tests.conftest import sample_job
from workers.task import PipelineCache, run_job

pytestmark = pytest.mark.slow

ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")

# A job whose pixels differ between 1 and 2 threads (many give the same pixels at 64 px).
JOB = sample_job(prompt="a red fox in the snow", negative_prompt="blurry", seed=7, steps=20)


@pytest.fixture
def torch_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_thread_count_changes_pixels_and_reproduce_uses_the_recorded_one(
    tmp_path: Path, torch_threads: None
) -> None:
    made = {t: run_job(dict(JOB), PipelineCache(device="cpu", threads=t)).png for t in (1, 2)}
    identical, _, _, max_abs = compare_pixels(made[1], made[2])
    assert not identical and max_abs is not None and max_abs > 0

    for t in (2, 1):  # the last pipeline loaded before each reproduction has the other count
        path = tmp_path / f"threads{t}.png"
        path.write_bytes(made[t])
        result = reproduce_image(path)
        assert result.here["torch_threads"] == t
        assert result.identical, result.summary()
        assert result.differences == []


def test_the_default_count_is_per_model_and_recorded(torch_threads: None) -> None:
    from workers.task import threads_for

    assert (threads_for("tiny"), threads_for("tiny-xl")) == (1, 1)  # too small for two
    assert threads_for("/models/stable-diffusion-v1-5") == 2
    assert threads_for("runwayml/stable-diffusion-v1-5") == 2
    assert threads_for("tiny", 3) == 3  # --threads wins
    out = run_job(dict(JOB), PipelineCache(device="cpu"))
    assert out.result["torch_threads"] == 1


GENERATE = [ORCHESTRATE, "generate", "--prompt", "a fox", "--steps", "1", "--output-path", "out"]


def omp_environment(tmp_path: Path, command: list[str] = GENERATE, **env: str) -> str:
    """libgomp's settings as ``command``'s torch sees them (by default a worker process's:
    ``orchestrate generate``), with ``OMP_DISPLAY_ENV=VERBOSE`` (printed when torch loads
    libgomp)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    base.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.run(
        command,
        cwd=tmp_path,
        env={**base, "OMP_DISPLAY_ENV": "VERBOSE", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_workers_wait_passively_unless_told_otherwise(tmp_path: Path) -> None:
    # Passive: no spinning at all (libgomp's default spins 300,000 times before sleeping,
    # and shows OMP_WAIT_POLICY as PASSIVE either way, so the spin count is what tells).
    shown = omp_environment(tmp_path)
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in shown
    assert "GOMP_SPINCOUNT = '0'" in shown
    # A policy the user set is kept.
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in omp_environment(tmp_path, OMP_WAIT_POLICY="ACTIVE")


def test_the_training_script_spins_unless_told_otherwise(tmp_path: Path) -> None:
    """Training has the machine to itself, so its OpenMP threads spin (passive waits made an
    x4 UNet step 1.7x slower); the script's own top level decides it, before torch loads."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "train_tiny.py"
    code = f"import runpy; runpy.run_path({str(script)!r}, run_name='imported'); import torch"
    command = [sys.executable, "-c", code]
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in omp_environment(tmp_path, command)
    assert "GOMP_SPINCOUNT = '0'" not in omp_environment(tmp_path, command)
    shown = omp_environment(tmp_path, command, OMP_WAIT_POLICY="PASSIVE")
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in shown
