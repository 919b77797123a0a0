"""Apple's own Core ML folders work as they are: its Swift resources (compiled models, the UNet
whole or in two chunks, vocab.json and merges.txt, nothing else) and its Python converter's
``Stable_Diffusion_version_<v>_*.mlpackage`` names, fp16 or fp32 inputs as each model declares.
The folders are built in Apple's layout (tests/apple_layout.py) from the random-weight dummy
pipeline (tests/dummy_pipeline.py: the tiny model's VAE and text encoder, a smaller UNet; these
are plumbing checks, images compared bit for bit or fp16 against fp32) and run through the real
``CoreMLBackend.generate()`` with the stand-in (tests/coreml_standin.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from contract.errors import JobInputError
from contract.job import GenerationRequest
from tests.apple_layout import apple_packages, apple_resources
from tests.coreml_standin import OFF_MACOS, backends_on, image_psnr, pixels
from tests.dummy_pipeline import dummy_pipe
from workers.models.schedulers import DIFFUSION_SCHEDULERS

pytestmark = [pytest.mark.slow, OFF_MACOS]


@pytest.fixture(scope="module")
def dummy(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The dummy pipeline through the diffusers backend."""
    from workers.backends.diffusers import DiffusersBackend

    pipe = dummy_pipe(tmp_path_factory.mktemp("dummy-tokenizer"))
    return DiffusersBackend("dummy", device="cpu", threads=1, pipeline=pipe)


@pytest.fixture(scope="module")
def folders(
    dummy: object, dummy_coreml: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Our fp32 and fp16 conversions of the dummy (shared with test_coreml_standin.py), and
    Apple-layout folders made from them. The model is v-prediction (as tiny is): its scheduler
    config and VAE config go beside Apple's files, as a user of such a model puts them (Apple's
    folders default to SD's epsilon schedule and 0.18215)."""
    root = tmp_path_factory.mktemp("apple")
    pipe = dummy.pipe  # type: ignore[attr-defined]
    out = {}
    for precision in ("fp32", "fp16"):
        ours = out[f"ours-{precision}"] = dummy_coreml(precision)
        for chunked in (False, True):
            name = f"resources-{precision}{'-chunked' if chunked else ''}"
            out[name] = apple_resources(
                ours, root / name, pipe, chunked=chunked, precision=precision
            )
            diffusers_files(ours, pipe, out[name])
    out["packages-fp16"] = apple_packages(out["ours-fp16"], root / "packages-fp16", "dummy")
    diffusers_files(out["ours-fp16"], pipe, out["packages-fp16"])
    return out


def diffusers_files(ours: Path, pipe: object, dest: Path) -> None:
    shutil.copytree(ours / "scheduler", dest / "scheduler")
    pipe.vae.save_config(dest / "vae")  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def backends(dummy: object, folders: dict[str, Path]) -> Iterator[dict[str, object]]:
    with backends_on(dummy.pipe, folders) as loaded:  # type: ignore[attr-defined]
        yield loaded


def request(scheduler: str = "dpmpp_2m", negative: str = "") -> GenerationRequest:
    return GenerationRequest(
        prompt="two small yellow squares on a black background",
        negative_prompt=negative,
        seed=11,
        steps=6,
        guidance_scale=7.5,
        width=64,
        height=64,
        scheduler=scheduler,
    )


def test_apple_folders_are_read_as_apple_writes_them(
    backends: dict[str, object], folders: dict[str, Path]
) -> None:
    resources = backends["resources-fp16-chunked"].folder  # type: ignore[attr-defined]
    assert resources.layout == "apple-resources"
    assert resources.unet_parts == ["UnetChunk1", "UnetChunk2"]
    assert all(p.suffix == ".mlmodelc" for p in resources.paths.values())
    assert sorted(p.name for p in folders["resources-fp16-chunked"].iterdir()) == [
        "TextEncoder.mlmodelc",
        "UnetChunk1.mlmodelc",
        "UnetChunk2.mlmodelc",
        "VAEDecoder.mlmodelc",
        "_packages",
        "merges.txt",
        "scheduler",
        "vae",
        "vocab.json",
    ]
    packages = backends["packages-fp16"].folder  # type: ignore[attr-defined]
    assert packages.layout == "apple-packages"
    assert packages.paths["Unet"].name == "Stable_Diffusion_version_dummy_unet.mlpackage"
    # dtypes and shapes from the compiled models' metadata.json
    unet = resources.inputs["UnetChunk1"]
    assert {k: (np.dtype(d.dtype).name, d.shape) for k, d in unet.items()} == {
        "sample": ("float16", (2, 8, 16, 16)),  # tiny's VAE: 8 latent channels, x4
        "timestep": ("float16", (2,)),
        "encoder_hidden_states": ("float16", (2, 32, 1, 77)),
    }
    assert {
        np.dtype(d.dtype).name for d in backends["resources-fp32"].folder.inputs["Unet"].values()
    } == {"float32"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("scheduler", DIFFUSION_SCHEDULERS)
def test_fp32_apple_resources_with_a_chunked_unet_make_the_diffusers_image(
    scheduler: str, dummy: object, backends: dict[str, object]
) -> None:
    req = request(scheduler, negative="a red circle")
    expected = pixels(dummy, req)
    assert np.array_equal(pixels(backends["resources-fp32-chunked"], req), expected)
    assert np.array_equal(pixels(backends["resources-fp32"], req), expected)


def test_fp16_apple_folders_make_our_folders_image(backends: dict[str, object]) -> None:
    req = request("euler_a")
    ours = pixels(backends["ours-fp16"], req)
    # the same packages under Apple's names, compiled or not, tokenized from vocab/merges
    assert np.array_equal(pixels(backends["resources-fp16"], req), ours)
    assert np.array_equal(pixels(backends["packages-fp16"], req), ours)
    # chunks are converted on their own: their boundary tensors pass in fp16, as on the Mac
    chunked = pixels(backends["resources-fp16-chunked"], req)
    psnr = image_psnr(chunked, ours)
    print(f"fp16 chunked vs whole UNet, Euler a 6 steps: {psnr:.1f} dB")
    assert psnr > 30


def test_what_apples_folders_leave_out_takes_stable_diffusions_values(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from workers.backends.coreml_folder import read_folder

    bare = tmp_path / "bare"
    shutil.copytree(
        folders["resources-fp16"], bare, ignore=shutil.ignore_patterns("scheduler", "vae")
    )
    info = read_folder(bare)
    assert info.scheduler_config["prediction_type"] == "epsilon"
    assert info.scheduler_config["beta_schedule"] == "scaled_linear"
    assert info.vae_scaling_factor == 0.18215
    assert not info.force_zeros_for_empty_prompt


def test_apple_folders_that_cannot_work_say_why_in_one_line(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from workers.backends.coreml_folder import is_coreml_folder, read_folder

    no_tokenizer = apple_packages(folders["ours-fp16"], tmp_path / "p", "dummy", tokenizer=False)
    with pytest.raises(JobInputError, match=r"has no tokenizer: put the model's vocab\.json"):
        read_folder(no_tokenizer).tokenizers(77)
    half = tmp_path / "half"
    shutil.copytree(folders["resources-fp16-chunked"], half)
    shutil.rmtree(half / "UnetChunk2.mlmodelc")
    with pytest.raises(JobInputError, match="has UnetChunk1 without UnetChunk2"):
        read_folder(half)
    two = apple_packages(folders["ours-fp16"], tmp_path / "two", "a")
    for p in folders["packages-fp16"].glob("*.mlpackage"):
        shutil.copytree(p, two / p.name)
    with pytest.raises(JobInputError, match=r"more than one model version \(a, dummy\)"):
        read_folder(two)
    assert is_coreml_folder(folders["resources-fp16-chunked"])
    assert is_coreml_folder(folders["packages-fp16"])
    assert not is_coreml_folder(tmp_path)
    with pytest.raises(JobInputError, match="has no Core ML UNet"):
        read_folder(tmp_path)


def test_sdxls_second_tokenizer_pads_with_an_exclamation_mark_from_vocab_files(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from workers.backends.coreml_folder import CoreMLFolder

    for f in ("vocab.json", "merges.txt"):
        shutil.copy(folders["ours-fp16"] / f, tmp_path / f)
    info = CoreMLFolder(tmp_path, "apple-resources", {}, ["Unet"], True, {}, 0.13025, 8, True)
    first, second = info.tokenizers(77)
    assert first.pad_token == "<|endoftext|>" and second.pad_token == "!"
    json.dumps(info.scheduler_config)  # plain data
