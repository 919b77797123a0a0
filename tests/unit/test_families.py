"""Model families told from a model folder's configs: which pipeline, which native size, and
a one-line refusal for every other kind of model. Config files only: no weights, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contract.errors import JobInputError
from orchestrator.manifest import parse_manifest
from orchestrator.preflight import model_problem
from workers.models import families, is_builtin, native_size

SD_VAE = {"block_out_channels": [128, 256, 512, 512]}


def model_folder(
    path: Path,
    class_name: str | None,
    *,
    unet: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    vae: dict[str, Any] | None = None,
) -> Path:
    """A diffusers folder's config files (the weights are never read)."""
    path.mkdir(parents=True)
    index = {"_diffusers_version": "0.42.1"}
    if class_name is not None:
        index["_class_name"] = class_name
    (path / "model_index.json").write_text(json.dumps(index))
    for part, name, config in (
        ("unet", "config.json", unet),
        ("scheduler", "scheduler_config.json", scheduler),
        ("vae", "config.json", vae),
    ):
        if config is not None:
            (path / part).mkdir()
            (path / part / name).write_text(json.dumps(config))
    return path


def sd1(path: Path) -> Path:
    return model_folder(
        path,
        "StableDiffusionPipeline",
        unet={"cross_attention_dim": 768, "sample_size": 64},
        scheduler={"_class_name": "PNDMScheduler", "prediction_type": "epsilon"},
        vae=SD_VAE,
    )


def sd2_768_v(path: Path) -> Path:
    return model_folder(
        path,
        "StableDiffusionPipeline",
        unet={"cross_attention_dim": 1024, "sample_size": 96},
        scheduler={"prediction_type": "v_prediction", "timestep_spacing": "leading"},
        vae=SD_VAE,
    )


def sd2_base(path: Path) -> Path:
    return model_folder(
        path,
        "StableDiffusionPipeline",
        unet={"cross_attention_dim": 1024, "sample_size": 64},
        scheduler={"prediction_type": "epsilon"},
        vae=SD_VAE,
    )


def sdxl(path: Path) -> Path:
    return model_folder(
        path,
        "StableDiffusionXLPipeline",
        unet={
            "cross_attention_dim": 2048,
            "sample_size": 128,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
        },
        scheduler={"_class_name": "EulerDiscreteScheduler", "prediction_type": "epsilon"},
        vae={**SD_VAE, "scaling_factor": 0.13025, "force_upcast": True},
    )


@pytest.mark.parametrize(
    ("make", "family", "pipeline", "prediction", "size"),
    [
        (sd1, "sd1", "StableDiffusionPipeline", "epsilon", 512),
        (sd2_768_v, "sd2", "StableDiffusionPipeline", "v_prediction", 768),
        (sd2_base, "sd2", "StableDiffusionPipeline", "epsilon", 512),
        (sdxl, "sdxl", "StableDiffusionXLPipeline", "epsilon", 1024),
    ],
)
def test_the_family_and_native_size_come_from_the_folder(
    tmp_path: Path, make: Any, family: str, pipeline: str, prediction: str, size: int
) -> None:
    folder = make(tmp_path / family)
    info = families.detect_folder(folder)
    assert (info.family.name, info.pipeline, info.prediction_type) == (family, pipeline, prediction)
    assert info.native_size == (size, size)
    assert native_size(str(folder)) == (size, size)


def test_v_prediction_alone_makes_it_sd2(tmp_path: Path) -> None:
    folder = model_folder(
        tmp_path / "m",
        "StableDiffusionPipeline",
        unet={"cross_attention_dim": 768, "sample_size": 96},
        scheduler={"prediction_type": "v_prediction"},
        vae=SD_VAE,
    )
    assert families.detect_folder(folder).family.name == "sd2"


def test_toy_widths_are_the_builtin_families(tmp_path: Path) -> None:
    toy_vae = {"block_out_channels": [16, 16, 32, 32]}
    tiny = model_folder(
        tmp_path / "tiny",
        "StableDiffusionPipeline",
        unet={"cross_attention_dim": 32, "sample_size": 8},
        vae=toy_vae,
    )
    tiny_xl = model_folder(
        tmp_path / "tiny-xl",
        "StableDiffusionXLPipeline",
        unet={"cross_attention_dim": 64, "sample_size": 8, "addition_embed_type": "text_time"},
        vae=toy_vae,
    )
    assert families.detect_folder(tiny).family.name == "tiny"
    assert families.detect_folder(tiny_xl).family.name == "tiny-xl"
    assert native_size(str(tiny_xl)) == (64, 64)


def test_the_vae_scale_is_read_not_assumed(tmp_path: Path) -> None:
    three_levels = model_folder(
        tmp_path / "m",
        "StableDiffusionPipeline",
        unet={"cross_attention_dim": 768, "sample_size": 64},
        vae={"block_out_channels": [128, 256, 512]},  # two downsamplings: 4x
    )
    info = families.detect_folder(three_levels)
    assert (info.vae_scale, info.native_size) == (4, (256, 256))
    assert native_size(str(three_levels)) == (256, 256)


def test_missing_configs_give_the_familys_usual_size(tmp_path: Path) -> None:
    xl = model_folder(tmp_path / "a", "StableDiffusionXLPipeline")
    assert families.detect_folder(xl).native_size == (1024, 1024)
    v_only = model_folder(
        tmp_path / "b", "StableDiffusionPipeline", scheduler={"prediction_type": "v_prediction"}
    )
    assert families.detect_folder(v_only).native_size == (768, 768)
    # no class name at all: Stable Diffusion, as every folder was taken before families
    legacy = families.detect_folder(model_folder(tmp_path / "c", None))
    assert (legacy.family.name, legacy.native_size) == ("sd1", (512, 512))


@pytest.mark.parametrize(
    "class_name",
    [
        "StableDiffusion3Img2ImgPipeline",
        "Flux2Pipeline",  # FLUX.2 dev (Mistral text): not Klein
        "StableDiffusionXLImg2ImgPipeline",  # the SDXL refiner's class
        "StableDiffusionXLInpaintPipeline",
        "StableDiffusionImg2ImgPipeline",
        "KandinskyV22Pipeline",
    ],
)
def test_other_kinds_are_refused_in_one_line_naming_the_class(
    tmp_path: Path, class_name: str
) -> None:
    folder = model_folder(tmp_path / "m", class_name, unet={"sample_size": 128}, vae=SD_VAE)
    with pytest.raises(families.UnsupportedModel) as info:
        families.detect_folder(folder)
    message = str(info.value)
    assert "\n" not in message
    assert f"names {class_name}," in message
    assert "Stable Diffusion 1.x and 2.x (StableDiffusionPipeline)" in message
    assert "SDXL base (StableDiffusionXLPipeline)" in message
    # a job for it fails at once (never retried), and preflight says the same line
    assert isinstance(info.value, JobInputError)
    assert model_problem(str(folder)) == message
    # the manifest still gets a size for it: preflight, not the parser, refuses it
    assert native_size(str(folder)) == (1024, 1024)


def test_a_unet_that_does_not_fit_the_class_is_refused(tmp_path: Path) -> None:
    sd_class_xl_unet = model_folder(
        tmp_path / "a",
        "StableDiffusionPipeline",
        unet={"cross_attention_dim": 2048, "addition_embed_type": "text_time"},
    )
    xl_class_sd_unet = model_folder(
        tmp_path / "b", "StableDiffusionXLPipeline", unet={"cross_attention_dim": 768}
    )
    for folder in (sd_class_xl_unet, xl_class_sd_unet):
        problem = model_problem(str(folder))
        assert problem is not None and "addition_embed_type" in problem, problem


def test_supported_folders_pass_preflight(tmp_path: Path) -> None:
    for make in (sd1, sd2_768_v, sdxl):
        assert model_problem(str(make(tmp_path / make.__name__))) is None
    assert model_problem("tiny-xl") is None
    assert model_problem("tiny-xl", "8bit") is None  # a uniform variant: built on first use


def test_a_cached_hub_model_of_another_kind_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    for repo, class_name in (
        ("me/sd3", "StableDiffusion3Img2ImgPipeline"),
        ("me/xl", "StableDiffusionXLPipeline"),
    ):
        snapshot = tmp_path / ("models--" + repo.replace("/", "--"))
        (snapshot / "refs").mkdir(parents=True)
        (snapshot / "refs" / "main").write_text("abc123")
        model_folder(snapshot / "snapshots" / "abc123", class_name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    problem = model_problem("me/sd3")
    assert problem is not None and "names StableDiffusion3Img2ImgPipeline," in problem
    assert model_problem("me/xl") is None
    assert native_size("me/xl") == (1024, 1024)  # from the cached model_index: SDXL's usual


def test_builtin_models_and_their_sizes() -> None:
    assert is_builtin("tiny") and is_builtin("tiny-xl") and not is_builtin("tiny-xxl")
    assert native_size("tiny") == native_size("tiny-xl") == (64, 64)


def test_a_manifest_row_takes_its_models_native_size(tmp_path: Path) -> None:
    xl = sdxl(tmp_path / "xl")
    m = parse_manifest(f"prompt,model\na,tiny-xl\nb,{xl}\nc,tiny\n", "m.csv")
    assert [(j.model, j.width, j.height) for j in m.jobs] == [
        ("tiny-xl", 64, 64),
        (str(xl), 1024, 1024),
        ("tiny", 64, 64),
    ]


def test_reading_families_imports_no_torch() -> None:
    code = (
        "import sys, workers.models.families, workers.models, orchestrator.preflight;"
        "workers.models.native_size('tiny-xl');"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
