"""The ``int4b32`` variant: weights linearly quantized to int4 per block of 32 input channels
(coremltools' ``per_block`` ``linear_symmetric`` int4, the 4-bit preset of Apple's Core AI
export), a torch variant built on first use for a UNet and a flow transformer alike; a manifest,
the CLI and preflight know its name, the Core ML backend refuses it, and coremltools' own pass
on a converted program reconstructs the very weights the variant holds."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.errors import JobInputError
from orchestrator.preflight import model_problem
from tests.conftest import image_job as job
from tests.conftest import manifest_of
from tests.conftest import png_pixels as pixels
from tests.helpers import cli_for
from workers.compression import registry
from workers.compression.palettize import (
    UNIFORM_MIN_SIZE,
    block_quantize_array,
    block_quantized_bits,
    candidate_layers,
    get_weight,
)
from workers.compression.variants import NOTE, block_layers, denoiser, quantize_per_block
from workers.metadata import read_png_metadata
from workers.task import PipelineCache, resolve_coreml_folder, run_job

CORE_ML_REFUSAL = (
    "int4b32 is a torch variant (--backend diffusers); a Core ML int4 per-block export is not "
    "built (palettize one with `orchestrate model convert --bits 4`)"
)


def psnr_8bit(reference: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def values_per_block(weight: np.ndarray) -> int:
    """The most distinct values of one block: an output channel's 32 input channels (with all
    of a Conv2d's kernel positions)."""
    blocks = weight.reshape(weight.shape[0], weight.shape[1] // 32, -1)
    return max(len(np.unique(b)) for row in blocks for b in row)


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache(device="cpu", threads=1)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "tiny-flux"])
def test_an_int4b32_job_runs_on_weights_quantized_per_block(
    cache: PipelineCache, model: str
) -> None:
    backend, _ = cache.get(model)
    net = denoiser(backend.pipe)
    modules = dict(net.named_modules())
    layers = block_layers(net, 32)
    kept = [n for n in candidate_layers(net, UNIFORM_MIN_SIZE) if n not in layers]
    # the UNet's conv_in has 8 input channels, fewer than a block: coremltools skips it
    assert layers and kept == (["conv_in"] if model == "tiny" else [])
    original = {n: get_weight(modules[n]).copy() for n in (*layers, *kept)}

    full = run_job(job(model), cache)
    quantized = run_job(job(model, quantization="int4b32"), cache)
    assert cache.current.family == model
    variant = dict(denoiser(cache.current.pipe).named_modules())
    for name in layers:
        weight = get_weight(variant[name])
        assert values_per_block(weight) <= 16  # 15 in fact: int4 in [-7, 7]
        # each block's values as coremltools reconstructs them from the fp16 weight
        expected = block_quantize_array(original[name].astype(np.float16))
        np.testing.assert_array_equal(weight, expected, err_msg=name)
    for name in kept:
        np.testing.assert_array_equal(get_weight(variant[name]), original[name])

    a, b = pixels(full.png), pixels(quantized.png)
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert psnr_8bit(a, b) > 20  # close (tiny: ~29 dB, tiny-flux: ~55 dB), not equal
    assert read_png_metadata(quantized.png)["meta"]["job"]["quantization"] == "int4b32"

    folder = registry.lookup(model, "int4b32", "torch")
    assert folder is not None and folder.name == f"{model}@int4b32"
    note = json.loads((folder / NOTE).read_text())
    assert note["quantization"] == {
        "mode": "linear_symmetric",
        "dtype": "int4",
        "granularity": "per_block",
        "block_size": 32,
        "weight_threshold": 2048,
        "scales": "fp16",
    }
    assert note["quantized_layers"] == list(layers) and note["kept_layers"] == kept
    bits = {n: block_quantized_bits(tuple(modules[n].weight.shape)) for n in layers}
    stored = sum(bits[n] * layers[n] for n in layers)
    assert note["quantized_avg_bits"] == pytest.approx(stored / sum(layers.values()))
    # a Linear is 4.5 bits a weight; a 3x3 conv's block holds 32 x 9 weights: 4 + 16/288
    assert set(bits.values()) == ({4.5, 4 + 16 / 288} if model == "tiny" else {4.5})
    params = sum(p.numel() for p in net.parameters())
    rest = params - sum(layers.values())
    assert note["fp16_mb"] == pytest.approx(params * 2 / 1e6)
    assert note["quantized_mb"] == pytest.approx((stored + 16 * rest) / 8e6)
    assert note["unet_avg_bits"] == pytest.approx((stored + 16 * rest) / params)
    (entry,) = [e for e in registry.entries() if (e["model"], e["variant"]) == (model, "int4b32")]
    assert entry["avg_bits"] == note["unet_avg_bits"] and entry["unet_mb"] == note["quantized_mb"]


def test_manifests_preflight_and_the_core_ml_backend_know_int4b32() -> None:
    m = manifest_of("prompt,model,quantization\nfox,tiny,int4b32\nowl,tiny-flux,INT4B32\n")
    assert [(j.model, j.quantization) for j in m.jobs] == [
        ("tiny", "int4b32"),
        ("tiny-flux", "int4b32"),
    ]
    assert model_problem("tiny", "int4b32") is None  # built on first use
    assert model_problem("tiny-flux", "int4b32") is None
    assert model_problem("tiny", "int4b32", "coreml") == CORE_ML_REFUSAL
    with pytest.raises(JobInputError) as info:
        resolve_coreml_folder("tiny", "int4b32")
    assert str(info.value) == CORE_ML_REFUSAL


@pytest.mark.slow
def test_generate_makes_an_int4b32_image(tmp_path: Path, model_cache: Path) -> None:
    cli = cli_for(tmp_path, model_cache, in_process=True)
    args = ("generate", "a fox", "--model", "tiny-flux", "--steps", "2", "--seed", "3")
    proc = cli(*args, "--quantization", "int4b32", "--output-path", "q")
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert read_png_metadata(path.read_bytes())["meta"]["job"]["quantization"] == "int4b32"


@pytest.mark.slow
def test_coremltools_own_pass_reconstructs_the_variants_weights(tmp_path: Path) -> None:
    """A converted (fp16) program with a 3x3 conv of 64 input channels, a Linear of 64 and one
    of 80 (two blocks and a half): coremltools' int4 per-block pass quantizes the first two,
    skips the third, and decompresses to exactly what the variant's quantization holds."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(64, 32, 3, padding=1)
            self.a = torch.nn.Linear(64, 48)
            self.b = torch.nn.Linear(80, 128)

        def forward(self, x: Any, y: Any, z: Any) -> Any:
            return self.conv(x), self.a(y), self.b(z)

    torch.manual_seed(0)
    net = Net().eval()
    inputs = (torch.zeros(1, 64, 4, 4), torch.zeros(1, 64), torch.zeros(1, 80))
    with warnings.catch_warnings():  # conversion notes, as in convert_pipeline
        warnings.simplefilter("ignore")
        model = ct.convert(
            torch.jit.trace(net, inputs),
            convert_to="mlprogram",
            inputs=[
                ct.TensorType(name=n, shape=i.shape) for n, i in zip("xyz", inputs, strict=True)
            ],
            minimum_deployment_target=ct.target.macOS15,  # int4 and per_block need iOS 18
            skip_model_load=True,
        )
    config = cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32
    )
    compressed = cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=config))
    ops = [
        op
        for op in compressed._mil_program.functions["main"].operations
        if op.op_type.startswith("constexpr_")
    ]
    assert {op.op_type for op in ops} == {"constexpr_blockwise_shift_scale"}
    assert {op.name: op.scale.val.shape for op in ops} == {
        "conv_weight_to_fp16_quantized": (32, 2, 1, 1),  # a scale per 32 x 3 x 3 weights
        "a_weight_to_fp16_quantized": (48, 2),
    }
    assert all(op.offset is None for op in ops)  # symmetric: no zero point
    theirs = {
        name.removesuffix("_weight_to_fp16").removesuffix("_weight_to_fp16_quantized"): w.val
        for name, w in cto.get_weights_metadata(
            cto.decompress_weights(compressed), weight_threshold=2048
        ).items()
    }
    before = {name: get_weight(m) for name, m in net.named_children()}
    assert quantize_per_block(net, 4, 32) == {"conv": 32 * 64 * 9, "a": 48 * 64}
    for name in ("conv", "a"):
        assert theirs[name].dtype == np.float16
        ours = get_weight(getattr(net, name))
        np.testing.assert_array_equal(ours, theirs[name].astype(np.float32))
        assert not np.array_equal(ours, before[name])
    # skipped by both: the fp16 weight in Core ML, the torch variant's own (fp32) one
    np.testing.assert_array_equal(theirs["b"], before["b"].astype(np.float16))
    np.testing.assert_array_equal(get_weight(net.b), before["b"])
