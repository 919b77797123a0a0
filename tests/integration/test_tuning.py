"""Device tuning switches: recorded with the image and the attempt, applied by reproduce,
refused in one line where the device cannot run them."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from orchestrator.reproduce import reproduce_image
from tests.conftest import sample_job
from workers.task import PipelineCache, run_job
from workers.tuning import Tuning


def test_labels_round_trip_and_compile_needs_cuda() -> None:
    t = Tuning(channels_last=True, low_memory=True)
    assert t.label == "channels-last,low-memory"
    assert Tuning.parse(t.label) == t
    assert Tuning.parse("") == Tuning() and Tuning().label == ""
    assert Tuning.parse("compile,from-the-future") == Tuning(compile=True)
    assert Tuning(compile=True).problem("cpu") == "--compile needs a CUDA device, not cpu"
    assert Tuning(compile=True).problem("cuda") is None
    assert Tuning(compile=True, low_memory=True).for_device("mps") == Tuning(low_memory=True)


def test_a_tuned_image_records_its_tuning_and_reproduces(tmp_path: Path) -> None:
    tuning = Tuning(channels_last=True, low_memory=True)
    out = run_job(dict(sample_job(steps=4)), PipelineCache(threads=1, tuning=tuning))
    assert out.result["tuning"] == "channels-last,low-memory"
    png = Image.open(io.BytesIO(out.png))
    assert 'Tuning: "channels-last,low-memory"' in png.info["parameters"]  # A1111 quotes commas
    assert json.loads(png.info["orchestrate"])["run"]["tuning"] == "channels-last,low-memory"
    path = tmp_path / "tuned.png"
    path.write_bytes(out.png)
    again = reproduce_image(path)
    assert again.identical, again.differences
    assert again.here["tuning"] == "channels-last,low-memory"
    plain = run_job(dict(sample_job(steps=4)), PipelineCache(threads=1))
    assert plain.result["tuning"] == ""
    assert "Tuning:" not in Image.open(io.BytesIO(plain.png)).info["parameters"]


def test_fused_cpu_batches_are_a_recorded_choice_close_to_the_lone_images() -> None:
    """``--fused-batches``: one UNet call for the whole batch on the CPU. Not byte-identical to
    the lone images (other kernels for other batch sizes), but within a level or two."""
    import numpy as np

    from contract.job import GenerationRequest

    exact, _ = PipelineCache(threads=1).get("tiny")
    fused, _ = PipelineCache(threads=1, tuning=Tuning(fused_batches=True)).get("tiny")
    assert not exact.fused_batches and fused.fused_batches
    assert fused.tuning_label == "fused-batches"
    requests = [
        GenerationRequest(
            f"a {c} circle on a black background", "", 5 + i, 6, 7.5, 64, 64, "dpmpp_2m"
        )
        for i, c in enumerate(("red", "green", "blue"))
    ]
    alone = [np.asarray(exact.generate(r).image).astype(int) for r in requests]
    together = [np.asarray(g.image).astype(int) for g in fused.generate_batch(requests)]
    for a, b in zip(alone, together, strict=True):
        assert np.abs(a - b).max() <= 4
