"""``--attention split_einsum_v2``: the UNet's transformer blocks in the Neural Engine's
(B, C, 1, S) layout (workers/compression/ane.py). Its torch form is numerically the diffusers
UNet, it converts to Core ML with its linear layers as 1x1 convolutions, a mixed-bit recipe
applies by layer name, and the Core ML backend's images from it match the diffusers ones."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.coreml_standin import OFF_MACOS, image_psnr, install, pixels
from workers.compression.palettize import psnr

pytestmark = pytest.mark.slow


def unet_psnr(pipe: Any, ane: Any, xl: bool) -> float:
    import torch

    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, pipe.unet.config.in_channels, 8, 8, generator=g)
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    extra = None
    if xl:
        extra = {
            "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]] * 2).float(),
            "text_embeds": torch.randn(2, 32, generator=g),
        }
    with torch.inference_mode():
        ref = pipe.unet(sample, torch.tensor([500.0] * 2), context, added_cond_kwargs=extra)
        out = ane(sample, torch.tensor([500.0] * 2), context, added_cond_kwargs=extra)
    return psnr(ref.sample.numpy(), out.sample.numpy())


@pytest.mark.parametrize("model", ["tiny", "tiny-xl"])
def test_the_neural_engine_layout_is_the_diffusers_unet(model: str) -> None:
    import torch

    from workers.compression.ane import to_neural_engine_layout
    from workers.task import PipelineCache

    backend, _ = PipelineCache(device="cpu", threads=1).get(model)
    pipe = backend.pipe  # type: ignore[attr-defined]
    ane = copy.deepcopy(pipe.unet)
    replaced = to_neural_engine_layout(ane)
    assert replaced == (16 if model == "tiny" else 6)  # tiny: 2+2+2 down, 1 mid, 3+3+3 up
    quality = unet_psnr(pipe, ane, xl=model == "tiny-xl")
    print(f"{model}: split_einsum_v2 vs diffusers UNet, fp32: {quality:.1f} dB")
    assert quality >= 60
    # the same parameter names (recipes apply by name), linear layers now 1x1 convolutions
    before = dict(pipe.unet.named_parameters())
    after = dict(ane.named_parameters())
    assert set(before) == set(after)
    q = next(n for n in after if n.endswith("attn2.to_q.weight"))
    assert after[q].ndim == 4 and after[q].shape[2:] == (1, 1)
    assert torch.equal(after[q][:, :, 0, 0], before[q])
    assert not any(
        isinstance(m, torch.nn.Linear | torch.nn.LayerNorm)
        for name, m in ane.named_modules()
        if ".transformer_blocks." in name
    )


def test_queries_chunked_give_the_same_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.compression import ane as ane_module
    from workers.task import PipelineCache

    backend, _ = PipelineCache(device="cpu", threads=1).get("tiny")
    pipe = backend.pipe  # type: ignore[attr-defined]
    monkeypatch.setattr(ane_module, "QUERY_CHUNK", 24)  # 256 queries at 16x16: 11 chunks
    chunked = copy.deepcopy(pipe.unet)
    ane_module.to_neural_engine_layout(chunked)
    assert unet_psnr(pipe, chunked, xl=False) >= 60


def test_split_einsum_v2_converts_and_takes_a_recipe_by_layer_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plumbing, on the random-weight dummy (tests/dummy_pipeline.py): the command converts the
    (B, C, 1, S) layout and palettizes it by layer name."""
    import coremltools as ct

    from tests.dummy_pipeline import dummy_pipe, resnet_count
    from workers.compression import commands
    from workers.compression.coreml import read_palettization

    monkeypatch.setattr(commands, "_pipeline", lambda model, **kw: dummy_pipe(tmp_path / "tok"))
    info = commands.compress_model(
        "dummy", tmp_path / "ane", fmt="coreml", bits=4, attention="split_einsum_v2", name="ane4"
    )
    layout_bits = read_palettization(tmp_path / "ane" / "Unet.mlpackage")
    assert info["palettized_layers"] == len(layout_bits) > 0
    assert any("attn2_to_q" in name for name in layout_bits)
    assert 10 < info["psnr_db"] < 100
    spec = ct.models.MLModel(
        str(tmp_path / "ane" / "Unet.mlpackage"), skip_model_load=True
    ).get_spec()
    ops = [
        op.type
        for f in spec.mlProgram.functions.values()
        for op in f.block_specializations[f.opset].operations
    ]
    # every linear layer of the transformer blocks is a convolution; the linear ops left are
    # the time embedding's and the ResNet blocks' projections of it, on (B, C) vectors
    unet = dummy_pipe(tmp_path / "tok2").unet
    outside = [
        n
        for n, m in unet.named_modules()
        if type(m).__name__ == "Linear" and ".attentions." not in n
    ]
    assert ops.count("linear") == len(outside) == 2 + resnet_count(unet)  # time embedding: 2
    assert ops.count("conv") > sum(1 for n in layout_bits if "attn" in n)


@OFF_MACOS
def test_an_fp32_split_einsum_v2_package_makes_the_diffusers_image(tmp_path: Path) -> None:
    """The conversion's fidelity, on the random-weight dummy (tests/dummy_pipeline.py)."""
    from contract.job import GenerationRequest
    from tests.dummy_pipeline import dummy_pipe
    from workers.backends.coreml import CoreMLBackend
    from workers.backends.diffusers import DiffusersBackend
    from workers.compression.coreml import convert_pipeline

    pipe = dummy_pipe(tmp_path / "tokenizer")
    diffusers = DiffusersBackend("dummy", device="cpu", threads=1, pipeline=pipe)
    ane_pipe = copy.deepcopy(pipe)
    convert_pipeline(
        ane_pipe,
        tmp_path / "v2",
        model_version="dummy",
        attention="split_einsum_v2",
        precision="fp32",
    )
    req = GenerationRequest(
        prompt="a green triangle at the top left on a white background",
        negative_prompt="",
        seed=2,
        steps=8,
        guidance_scale=7.5,
        width=64,
        height=64,
        scheduler="dpmpp_2m",
    )
    with pytest.MonkeyPatch.context() as mp:
        install(mp, ane_pipe)  # the stand-in evaluates the package's own (B, C, 1, S) graph
        coreml = CoreMLBackend("dummy", tmp_path / "v2", compute_units="CPU_AND_NE")
        got = pixels(coreml, req)
    want = pixels(diffusers, req)
    quality = image_psnr(got, want)
    print(f"split_einsum_v2 fp32 package vs diffusers, DPM++ 8 steps: {quality:.1f} dB")
    assert quality >= 45
