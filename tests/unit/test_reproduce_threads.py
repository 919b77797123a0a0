"""``reproduce`` regenerates with the thread count the PNG records, never today's default
(issue 12): the count changes the pixels, so a new default must not change old images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import contract.limits
import workers.task
from contract.limits import UNRECORDED_THREADS
from orchestrator.reproduce import reproduce_image
from tests.conftest import sample_job
from workers.metadata import encode_png
from workers.task import TaskOutput

JOB = sample_job(prompt="a red fox in the snow", negative_prompt="blurry", seed=7, steps=20)


RUN = {"backend": "diffusers", "device": "cpu", "dtype": "fp32"}


class Fake:
    """No pipeline: the regenerated PNG is ``png``, and its result names the thread count the
    cache was made with; ``made`` lists the caches' arguments."""

    def __init__(self) -> None:
        self.png = b""
        self.made: list[dict[str, Any]] = []

    def cache(self, **kw: Any) -> Any:
        self.made.append(kw)
        return kw

    def run_job(self, job: dict[str, Any], cache: dict[str, Any]) -> TaskOutput:
        return TaskOutput(png=self.png, result={**RUN, "torch_threads": cache["threads"]})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Fake:
    f = Fake()
    monkeypatch.setattr(workers.task, "PipelineCache", f.cache)
    monkeypatch.setattr(workers.task, "run_job", f.run_job)
    # Whatever the default becomes, an image is regenerated as it was made.
    monkeypatch.setattr(contract.limits, "DEFAULT_THREADS", 7)
    return f


def write_image(path: Path, run: dict[str, Any]) -> bytes:
    png = encode_png(
        Image.new("RGB", (64, 64), (10, 20, 30)), "x", {"job": JOB, "run": run}, model="tiny"
    )
    path.write_bytes(png)
    return png


@pytest.mark.parametrize("recorded", [1, 2, 3])
def test_reproduce_uses_the_recorded_thread_count(
    tmp_path: Path, fake: Fake, recorded: int
) -> None:
    path = tmp_path / "image.png"
    fake.png = write_image(path, {**RUN, "torch_threads": recorded})
    result = reproduce_image(path)
    assert [m["threads"] for m in fake.made] == [recorded]
    assert result.here["torch_threads"] == recorded
    assert result.identical and result.differences == []


def test_an_image_without_a_recorded_count_uses_the_old_default(tmp_path: Path, fake: Fake) -> None:
    path = tmp_path / "image.png"
    fake.png = write_image(path, RUN)
    reproduce_image(path)
    assert UNRECORDED_THREADS == 2  # the default of the releases that wrote no count
    assert [m["threads"] for m in fake.made] == [2]
