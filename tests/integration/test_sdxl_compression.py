"""`orchestrate model` analyze, recipe, compress and convert on SDXL (the built-in tiny-xl):
Apple's mixed-bit recipe applies to SDXL's UNet by layer name as to SD's, the torch variant runs
through the job path, and the Core ML conversion is Apple's SDXL layout (two text encoders, a
UNet taking ``time_ids`` and ``text_embeds``), palettized layer by layer. A full SDXL Core ML
conversion needs more memory than our 24 GiB machines; the tiny SDXL has every part of it."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.errors import CompressionError
from workers.compression.palettize import mean, psnr

pytestmark = pytest.mark.slow
MIN_SIZE = 4_000  # tiny-xl's larger layers
XL_JOB = {
    "model": "tiny-xl",
    "prompt": "a red circle on a blue background",
    "negative_prompt": "",
    "seed": 4,
    "steps": 6,
    "guidance_scale": 5.0,
    "width": 64,
    "height": 64,
    "scheduler": "euler",
}


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from workers.compression.commands import analyze_model

    out = tmp_path_factory.mktemp("analysis") / "tiny-xl.json"
    # per-tensor widths only: grouped candidates are analysed on tiny (test_compression.py);
    # one probe prompt (the layers' ranking is what is checked): 40% less time than two
    return out, analyze_model(
        "tiny-xl", out, min_size=MIN_SIZE, num_recipes=3, prompts=1, grouped=()
    )


def test_sdxl_analysis_ranks_its_unet_layers_and_makes_recipes(
    analysis: tuple[Path, dict[str, Any]],
) -> None:
    from workers.compression.commands import make_recipe

    path, result = analysis
    sizes = result["orchestrate"]["sizes"]
    # SDXL's own layers are candidates: the added (time/text) embedding and the linear
    # projections of its transformer blocks
    assert any(name.startswith("add_embedding.") for name in sizes)
    assert any(".proj_in" in name for name in sizes)
    per_bits = [mean(mean(result["single_layer"][str(n)][k]) for k in sizes) for n in (2, 8)]
    assert per_bits[0] < per_bits[1] - 10
    made = make_recipe(path, bits=4.5, name="xl45")
    assert made["avg_bits"] == pytest.approx(4.5, abs=0.6)
    assert "xl45" in json.loads(path.read_text())["recipes"]


def test_sdxl_torch_variant_runs_through_the_job_path(
    analysis: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from PIL import Image

    from workers.compression.commands import compress_model, make_recipe
    from workers.task import PipelineCache, run_job

    path, _ = analysis
    make_recipe(path, bits=4.5, name="xl45")
    info = compress_model(
        "tiny-xl", tmp_path / "variant", fmt="torch", recipe_spec=f"{path}:xl45", name="xl45"
    )
    assert info["palettized_mb"] < info["fp16_mb"]
    assert 10 < info["psnr_db"] < 100
    cache = PipelineCache()
    ref = np.asarray(Image.open(io.BytesIO(run_job(dict(XL_JOB), cache).png)).convert("RGB"))
    out = run_job({**XL_JOB, "quantization": "xl45"}, cache)
    img = np.asarray(Image.open(io.BytesIO(out.png)).convert("RGB"))
    assert not np.array_equal(ref, img)
    assert psnr(ref.astype(float), img.astype(float)) > 15


def test_sdxl_coreml_compress_palettizes_apples_sdxl_layout(
    analysis: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from workers.backends.coreml import declared_inputs
    from workers.compression.commands import compress_model, make_recipe
    from workers.compression.coreml import coreml_weight_name, read_palettization
    from workers.compression.recipes import load_recipe

    path, _ = analysis
    make_recipe(path, bits=4.5, name="xl45")
    out = tmp_path / "xl-coreml"
    info = compress_model("tiny-xl", out, fmt="coreml", recipe_spec=f"{path}:xl45", name="xl45c")
    assert {p.name for p in out.glob("*.mlpackage")} == {
        "TextEncoder.mlpackage",
        "TextEncoder2.mlpackage",
        "Unet.mlpackage",
        "VAEDecoder.mlpackage",
    }
    unet = declared_inputs(out / "Unet.mlpackage")
    assert list(unet) == ["sample", "timestep", "encoder_hidden_states", "time_ids", "text_embeds"]
    layout = json.loads((out / "orchestrate-coreml.json").read_text())
    assert layout["family"] == "sdxl" and layout["force_zeros_for_empty_prompt"] is True
    assert layout["inputs"]["Unet"]["encoder_hidden_states"] == [2, 64, 1, 77]
    assert layout["inputs"]["Unet"]["text_embeds"] == [2, 32]
    _, recipe = load_recipe(f"{path}:xl45")
    expected = {coreml_weight_name(n): b for n, b in recipe.items() if b != 16}
    assert read_palettization(out / "Unet.mlpackage") == expected
    assert info["palettized_mb"] < info["fp16_mb"]
    assert 10 < info["psnr_db"] < 100
    if sys.platform != "darwin":
        assert info["compile"].startswith("compiling to .mlmodelc needs macOS")
        assert "TextEncoder2.mlpackage" in info["compile"]


def test_export_checkpoint_still_refuses_sdxl_in_one_line() -> None:
    from workers.compression.commands import export_checkpoint_file

    with pytest.raises(CompressionError) as info:
        export_checkpoint_file("tiny-xl", Path("never-written.safetensors"))
    assert str(info.value) == (
        "model 'tiny-xl' is the built-in tiny SDXL (family tiny-xl); this `orchestrate model` "
        "command takes SD 1.x and 2.x models only"
    )
    assert not Path("never-written.safetensors").exists()
