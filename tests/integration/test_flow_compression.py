"""Mixed-bit palettization of a flow-matching transformer: ``model analyze`` ranks the
transformer's layers on the inputs its own pipeline gives it, ``model recipe`` picks bits for a
target, ``model compress --format torch`` makes a variant a job runs; Core ML refuses these
families in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.errors import CompressionError
from tests.conftest import sample_job
from workers.compression.analysis import FlowProbe, ProbeConfig, probe_for
from workers.compression.commands import analyze_model, compress_model, make_recipe
from workers.task import PipelineCache, run_job

pytestmark = pytest.mark.slow

PROBE = ProbeConfig(prompts=ProbeConfig().prompts[:2], threads=1)


def load(model: str):  # type: ignore[no-untyped-def]
    from workers.backends.diffusers import load_pipeline, model_source

    return load_pipeline(model_source(model), torch.float32)


@pytest.mark.parametrize(
    ("model", "layout", "calls"),
    [
        ("tiny-sd3", "stacked", 1),
        ("tiny-flux", "single", 1),
        ("tiny-flux2", "pair", 2),
        ("tiny-zimage", "stacked", 1),  # a list of latents, the prompts first
    ],
)
def test_the_probe_replays_the_pipelines_own_transformer_calls(
    model: str, layout: str, calls: int
) -> None:
    pipe = load(model)
    own = type(pipe.scheduler).__name__
    probe = probe_for(pipe, PROBE)
    assert isinstance(probe, FlowProbe)
    assert (probe.layout, len(probe.calls)) == (layout, calls)
    assert type(pipe.scheduler).__name__ == own  # the model's own scheduler is put back
    out = probe.run()
    assert out.shape[0] == 2 and np.isfinite(out).all() and out.std() > 0
    assert np.array_equal(out, probe.run())  # the same inputs every time
    # a layer's weights changed: the output changes
    layer = next(m for m in pipe.transformer.modules() if type(m).__name__ == "Linear")
    with torch.no_grad():
        layer.weight.mul_(0.5)
    assert not np.array_equal(out, probe.run())


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_analyze_recipe_compress_and_run_a_mixed_bit_transformer(
    model: str, tmp_path: Path
) -> None:
    analysis = tmp_path / f"{model}.json"
    results = analyze_model(
        model, analysis, min_size=1000, prompts=2, grouped=(), num_recipes=3, threads=1
    )
    single = results["single_layer"]["4"]
    layers = [k for k in single if k != "metadata"]
    assert len(layers) > 20  # the transformer's Linear layers, each measured alone
    assert all(name in results["orchestrate"]["sizes"] for name in layers)
    assert any("attn" in name for name in layers)
    # fewer bits hurt more, layer by layer on average
    mean = {b: np.mean([np.mean(results["single_layer"][b][n]) for n in layers]) for b in "248"}
    assert mean["2"] < mean["4"] < mean["8"]
    assert len(results["recipes"]) == 3

    recipe = make_recipe(analysis, bits=4.0, name="mixed4")
    assert 3.5 < recipe["avg_bits"] <= 4.2
    assert "mixed4" in json.loads(analysis.read_text())["recipes"]

    out = tmp_path / "variant"
    made = compress_model(model, out, fmt="torch", recipe_spec=f"{analysis}:mixed4")
    assert made["variant"] == "mixed4" and made["psnr_db"] > 20
    assert (out / "transformer").is_dir() and (out / "model_index.json").is_file()
    index = json.loads((out / "model_index.json").read_text())
    assert index["scheduler"][1] == "FlowMatchEulerDiscreteScheduler"  # its own, not the probe's

    cache = PipelineCache(device="cpu", threads=1)
    job = sample_job(model=model, prompt="a red circle", seed=3, steps=4, scheduler="dpmpp_2m")
    full = run_job(dict(job), cache)
    mixed = run_job({**job, "quantization": "mixed4"}, cache)
    assert cache.current.quantization == "mixed4"
    assert full.png != mixed.png


def test_core_ml_refuses_a_flow_model_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(CompressionError) as info:
        compress_model("tiny-flux", tmp_path / "x", fmt="coreml", bits=4)
    message = str(info.value)
    assert "\n" not in message and "family tiny-flux" in message
    assert "`--format torch` compresses them" in message
