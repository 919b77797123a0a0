"""The diffusers backend on each model family: the built-in tiny SDXL (``tiny-xl``) through
the real task and the CLI, an SD 2.x-style v-prediction folder built here, and the one-line
refusal of other kinds of model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.errors import JobInputError
from tests.conftest import png_pixels as pixels
from tests.conftest import sample_job
from tests.e2e.conftest import Cli
from workers.cache import default_cache_dir
from workers.metadata import read_png_metadata
from workers.models import families
from workers.models.schedulers import DIFFUSION_SCHEDULERS, build_scheduler
from workers.task import PipelineCache, run_job

pytestmark = pytest.mark.slow

XL_JOB = sample_job(
    prompt="a lighthouse, at dawn", negative_prompt="blurry", model="tiny-xl", seed=11, steps=3
)


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache(device="cpu", threads=1)


# -- tiny-xl ---------------------------------------------------------------------------------


def test_tiny_xl_is_an_sdxl_folder_built_once_in_the_cache() -> None:
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from workers.tiny.xl import ensure_tiny_xl_model

    path = ensure_tiny_xl_model()
    assert path == default_cache_dir() / "models" / "tiny-xl-v1"
    stamp = (path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_xl_model() == path
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tiny-xl")]  # no leftovers

    info = families.detect_folder(path)
    assert (info.family.name, info.pipeline, info.native_size) == (
        "tiny-xl",
        "StableDiffusionXLPipeline",
        (64, 64),
    )
    pipe = StableDiffusionXLPipeline.from_pretrained(path)
    assert type(pipe.text_encoder) is CLIPTextModel
    assert type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    unet = pipe.unet.config
    assert unet.addition_embed_type == "text_time"
    # the context is both encoders' hidden states side by side; the added embedding is the
    # pooled (projected) text and the six size/crop time ids
    widths = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.cross_attention_dim == widths
    assert unet.projection_class_embeddings_input_dim == (
        6 * unet.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
    )
    assert pipe.vae_scale_factor == 8
    for name in ("tokenizer", "tokenizer_2"):
        assert (path / name / "vocab.json").is_file() and (path / name / "merges.txt").is_file()


def encoder_calls(
    backend: Any, job: dict[str, Any], cache: PipelineCache
) -> tuple[Any, dict[str, int]]:
    """Run ``job``, counting the calls of each of the SDXL pipeline's text encoders."""
    calls = {"text_encoder": 0, "text_encoder_2": 0}
    hooks = [
        getattr(backend.pipe, name).register_forward_hook(
            lambda *_a, name=name: calls.__setitem__(name, calls[name] + 1)
        )
        for name in calls
    ]
    try:
        return run_job(job, cache), calls
    finally:
        for hook in hooks:
            hook.remove()


def test_tiny_xl_through_the_task_same_seed_same_pixels(cache: PipelineCache) -> None:
    backend, _ = cache.get("tiny-xl")
    assert type(backend.pipe).__name__ == "StableDiffusionXLPipeline"
    assert backend.family == "tiny-xl"
    first, calls = encoder_calls(backend, dict(XL_JOB), cache)
    # the prompt and the negative prompt went through both encoders
    assert calls == {"text_encoder": 2, "text_encoder_2": 2}

    again = run_job(dict(XL_JOB), cache)
    other_seed = run_job({**XL_JOB, "seed": 12}, cache)
    other_prompt = run_job({**XL_JOB, "prompt": "a red fox"}, cache)
    image = pixels(first.png)
    assert image.shape == (64, 64, 3)
    assert first.result["width"] == first.result["height"] == 64
    assert np.array_equal(image, pixels(again.png))
    assert not np.array_equal(image, pixels(other_seed.png))
    assert not np.array_equal(image, pixels(other_prompt.png))
    assert image.std() > 0  # not a blank image

    meta = read_png_metadata(first.png)
    assert "Seed: 11, Size: 64x64, Model: tiny-xl, RNG: CPU" in meta["parameters"]
    assert meta["meta"]["run"]["versions"]["model_family"] == "tiny-xl"
    assert first.result["unet_evaluations"] == 3 * 2  # classifier-free guidance


def test_an_empty_negative_prompt_is_sdxls_zeros(cache: PipelineCache) -> None:
    """SDXL's own convention (force_zeros_for_empty_prompt): an empty negative prompt is not
    encoded, its embeddings are zeros."""
    backend, _ = cache.get("tiny-xl")
    assert backend.pipe.config.force_zeros_for_empty_prompt
    empty, calls = encoder_calls(backend, {**XL_JOB, "negative_prompt": ""}, cache)
    assert calls == {"text_encoder": 1, "text_encoder_2": 1}
    assert not np.array_equal(pixels(empty.png), pixels(run_job(dict(XL_JOB), cache).png))


def test_uniform_variants_work_for_tiny_xl(cache: PipelineCache) -> None:
    fp = run_job(dict(XL_JOB), cache)
    eight = run_job({**XL_JOB, "quantization": "8bit"}, cache)
    assert cache.current.family == "tiny-xl"
    a, b = pixels(fp.png).astype(int), pixels(eight.png).astype(int)
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert np.abs(a - b).mean() < 2  # palettized to 8 bits: close, not equal (seeds: ~40)


# -- SD 2.x: v-prediction --------------------------------------------------------------------


def build_v_prediction_sd(destination: Path) -> None:
    """A random-weight Stable Diffusion of SD 2.x's 768-v kind at toy size: a v-prediction
    scheduler with trailing timesteps, a 96 px native size (12 latents x 8)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from workers.tiny import write_clip_vocabulary

    vocab_size = write_clip_vocabulary(destination / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(destination / "tokenizer", model_max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=12,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,  # as SD 2.x
        upcast_attention=True,  # as SD 2.1 768-v
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
    )
    StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(destination)


@pytest.fixture(scope="module")
def v_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The v-prediction folder, and a copy whose scheduler says epsilon (same weights)."""
    root = tmp_path_factory.mktemp("sd2")
    v = root / "sd2-v"
    build_v_prediction_sd(v)
    eps = root / "sd2-eps"
    shutil.copytree(v, eps)
    config_path = eps / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "epsilon"
    config_path.write_text(json.dumps(config))
    return v, eps


def test_v_prediction_folder_keeps_v_prediction_and_generates(v_model: tuple[Path, Path]) -> None:
    from workers.backends.diffusers import DiffusersBackend
    from workers.models import native_size

    v, eps = v_model
    info = families.detect_folder(v)
    # toy-width text makes it the tiny family (the built-in tiny is v-prediction too); a
    # real-width v-prediction folder is sd2 (tests/unit/test_families.py)
    assert (info.family.name, info.prediction_type, info.native_size) == (
        "tiny",
        "v_prediction",
        (96, 96),
    )
    assert native_size(str(v)) == (96, 96)

    backend = DiffusersBackend(str(v), device="cpu", threads=1)
    assert type(backend.pipe).__name__ == "StableDiffusionPipeline"
    assert backend.family == "tiny"
    # every scheduler a job may name keeps the model's prediction type and timestep spacing
    for name in DIFFUSION_SCHEDULERS:
        scheduler = build_scheduler(name, backend._scheduler_config)
        assert scheduler.config.prediction_type == "v_prediction", name
        assert scheduler.config.timestep_spacing == "trailing", name

    job = sample_job(model=str(v), width=96, height=96, steps=3, scheduler="ddim", seed=3)
    cache = PipelineCache(device="cpu", threads=1)
    out = run_job(dict(job), cache)
    image = pixels(out.png)
    assert image.shape == (96, 96, 3) and image.std() > 0
    assert np.array_equal(image, pixels(run_job(dict(job), cache).png))
    assert read_png_metadata(out.png)["meta"]["run"]["versions"]["model_family"] == "tiny"
    # the prediction type is used, not just kept: the same weights read as epsilon differ
    as_eps = run_job({**job, "model": str(eps)}, PipelineCache(device="cpu", threads=1))
    assert not np.array_equal(image, pixels(as_eps.png))


# -- other kinds of model --------------------------------------------------------------------


def img2img_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(
        json.dumps(
            {"_class_name": "StableDiffusion3Img2ImgPipeline", "_diffusers_version": "0.42.1"}
        )
    )
    return path


def test_the_backend_refuses_another_kind_before_loading(tmp_path: Path) -> None:
    folder = img2img_folder(tmp_path / "sd3")
    with pytest.raises(JobInputError) as info:
        run_job(sample_job(model=str(folder)), PipelineCache(device="cpu"))
    assert str(info.value) == f"model {str(folder)!r}: " + families.refusal(
        "StableDiffusion3Img2ImgPipeline"
    )


# -- the CLI: a manifest of both built-ins, reproduce, preflight ------------------------------


@pytest.fixture
def cli(tmp_path: Path, model_cache: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
    env["ORCHESTRATE_CACHE"] = str(model_cache)
    env.pop("PYTEST_CURRENT_TEST", None)
    runner = Cli(tmp_path, env)
    yield runner
    runner.kill_all()


def test_a_manifest_of_tiny_and_tiny_xl_runs_and_reproduces(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "jobs.csv").write_text(
        "prompt,model,seed,steps,output_name\n"
        "a red fox,tiny,5,3,sd\n"
        "a red fox,tiny-xl,5,3,xl\n"
        "a lighthouse,tiny-xl,6,3,xl2\n"
    )
    run = cli("run", "jobs.csv")
    assert "3/3 succeeded, 0 failed" in run.stdout, run.stdout
    # <job id>-<output_name>.png
    pngs = {p.stem.split("-", 1)[1]: p for p in (tmp_path / "output" / "1").glob("*.png")}
    assert set(pngs) == {"sd", "xl", "xl2"}, pngs
    families_run = {}
    for stem, path in pngs.items():
        meta = read_png_metadata(path.read_bytes())
        assert pixels(path.read_bytes()).shape == (64, 64, 3)
        model = meta["meta"]["job"]["model"]
        assert f"Size: 64x64, Model: {model}, RNG: CPU" in meta["parameters"]
        families_run[stem] = meta["meta"]["run"]["versions"]["model_family"]
    assert families_run == {"sd": "tiny", "xl": "tiny-xl", "xl2": "tiny-xl"}

    shutil.copy(pngs["xl"], tmp_path / "xl.png")
    proc = cli("reproduce", "xl.png", "--compare")
    assert proc.stdout.splitlines()[0] == "xl.png: reproduced, pixels identical"
    assert np.array_equal(
        pixels((tmp_path / "xl.png").read_bytes()),
        pixels((tmp_path / "xl.reproduced.png").read_bytes()),
    )


def test_run_refuses_an_unsupported_folder_before_any_work(cli: Cli, tmp_path: Path) -> None:
    folder = img2img_folder(tmp_path / "sd3")
    (tmp_path / "jobs.csv").write_text(f"prompt,model\na,tiny-xl\nb,{folder}\n")
    proc = cli("run", "jobs.csv", check=2)
    line = (
        f"error: model {str(folder)!r}, 1 job: its model_index.json names "
        "StableDiffusion3Img2ImgPipeline, a kind of model this tool does not run; it runs "
        + families.SUPPORTED
    )
    assert line in proc.stderr.splitlines(), proc.stderr
    assert not (tmp_path / "output").exists()
