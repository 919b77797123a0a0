"""The built-in ``tiny-flow``: SD3's layout trained from code with the rectified-flow objective
(``scripts/train_tiny.py --recipe flow``), shipped, loaded offline and scored by the judge."""

from __future__ import annotations

import json

import pytest

from tests.conftest import image_job
from workers.task import PipelineCache
from workers.tiny import SHIPPED_TINY, SHIPPED_TINY_FLOW
from workers.tiny.evaluation import SHIPPED_FLOW_ADHERENCE, evaluate
from workers.tiny.judge import HELD_OUT_PROMPTS, judge

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend() -> object:
    return PipelineCache(device="cpu", threads=1).get("tiny-flow")[0]


def test_tiny_flow_is_a_shipped_sd3_folder_on_the_tiny_vae() -> None:
    from diffusers import StableDiffusion3Pipeline

    from workers.models import builtin_model
    from workers.models.families import detect_folder

    path = builtin_model("tiny-flow")
    assert path == SHIPPED_TINY_FLOW
    info = detect_folder(path)
    assert (info.family.name, info.family.kind, info.guidance) == ("tiny-sd3", "flow", "cfg")
    pipe = StableDiffusion3Pipeline.from_pretrained(path)
    assert pipe.vae_scale_factor == 4 and pipe.transformer.config.patch_size == 2
    # the CLIP tokenizers are the tiny's plain files: the scenes' words are single tokens
    for sub in ("tokenizer", "tokenizer_2"):
        assert (path / sub / "vocab.json").is_file() and (path / sub / "merges.txt").is_file()
    assert pipe.tokenizer.tokenize("yellow squares") == ["yellow</w>", "squares</w>"]
    # the VAE's weights are the shipped tiny's, byte for byte
    name = "vae/diffusion_pytorch_model.safetensors"
    assert (path / name).read_bytes() == (SHIPPED_TINY / name).read_bytes()
    record = json.loads((path / "training.json").read_text())
    assert record["recipe"] == "flow"
    assert record["held_out"]["adherence"] >= SHIPPED_FLOW_ADHERENCE


def test_shipped_tiny_flow_draws_what_its_prompt_says(backend: object) -> None:
    """On held-out prompts it was never trained on, at 20 DPM-Solver++ (flow sigmas) steps, the
    judge finds what each prompt states (the recorded figure is over all 60; this is the first
    20), and a prompt reaches the image."""
    result = evaluate(backend, HELD_OUT_PROMPTS[:20])
    assert result.adherence >= SHIPPED_FLOW_ADHERENCE - 0.1, result.summary()
    red, blue = (
        judge(evaluate(backend, [p], seed=5).images[0], p)
        for p in (
            "a large red circle on a white background",
            "a large blue square on a black background",
        )
    )
    assert red is not None and blue is not None
    assert red.found["background"] == "white" and blue.found["background"] == "black"


def test_a_prompt_longer_than_its_32_tokens_is_recorded_for_each_encoder() -> None:
    """tiny-flow's CLIP encoders read 32 tokens (not CLIP's usual 77), as its T5 does; a longer
    prompt is drawn from its start and the image's metadata says so, encoder by encoder."""
    from workers.metadata import read_png_metadata
    from workers.task import run_job

    long = "a red circle on a blue background next to " + "a small green square, " * 8
    out = run_job(image_job("tiny-flow", prompt=long), PipelineCache(device="cpu", threads=1))
    cut = read_png_metadata(out.png)["meta"]["prompt_truncated"]
    assert set(cut) == {"CLIP-L", "CLIP-G", "T5"}
    assert all(kept == 32 < tokens for tokens, kept in cut.values()), cut
