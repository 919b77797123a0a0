"""The Core ML backend's own ``generate()``, run off macOS through a stand-in that honours each
converted package's declared inputs and its own weights (``tests/coreml_standin.py``). On
macOS the same checks would run against Core ML itself; there, Core ML's kernels and fp16
activations are what a Mac run confirms (docs/coreml.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from contract.job import GenerationRequest
from tests.coreml_standin import (
    OFF_MACOS,
    StandInModel,
    backends_on,
    image_psnr,
    install,
    pixels,
)
from tests.dummy_pipeline import dummy_pipe
from workers.models.schedulers import DIFFUSION_SCHEDULERS
from workers.task import PipelineCache

pytestmark = [OFF_MACOS, pytest.mark.slow]  # converts the tiny UNet to Core ML


@pytest.fixture(scope="module")
def dummy(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The random-weight dummy pipeline (tests/dummy_pipeline.py) through the diffusers backend:
    for the bit-for-bit checks, which need a pipeline's shape, not its training."""
    from workers.backends.diffusers import DiffusersBackend

    pipe = dummy_pipe(tmp_path_factory.mktemp("dummy-tokenizer"))
    return DiffusersBackend("dummy", device="cpu", threads=1, pipeline=pipe)


@pytest.fixture(scope="module")
def folders(
    tiny_coreml: Callable[[str], Path], dummy_coreml: Callable[[str], Path]
) -> dict[str, Path]:
    """tiny's fp16 conversion (shared with test_compression.py) and the dummy's fp32 one
    (shared with test_coreml_apple_layout.py)."""
    return {"fp32": dummy_coreml("fp32"), "fp16": tiny_coreml("fp16")}


@pytest.fixture(scope="module")
def backends(tiny: object, dummy: object, folders: dict[str, Path]) -> Iterator[dict[str, object]]:
    """The Core ML backend on each folder, loaded once (stand-ins installed for the module)."""
    pipes = dummy.pipe, tiny.pipe  # type: ignore[attr-defined]
    with (
        backends_on(pipes[0], {"fp32": folders["fp32"]}, "dummy") as fp32,
        backends_on(pipes[1], {"fp16": folders["fp16"]}) as fp16,
    ):
        yield {**fp32, **fp16}


def request(scheduler: str, seed: int = 3) -> GenerationRequest:
    return GenerationRequest(
        prompt="a red circle on a blue background",
        negative_prompt="",
        seed=seed,
        steps=6,
        guidance_scale=7.5,
        width=64,
        height=64,
        scheduler=scheduler,
    )


@pytest.mark.parametrize("scheduler", DIFFUSION_SCHEDULERS)
def test_an_fp32_package_makes_the_diffusers_image_bit_for_bit(
    scheduler: str, dummy: object, backends: dict[str, object]
) -> None:
    backend = backends["fp32"]
    got = pixels(backend, request(scheduler))
    assert np.array_equal(got, pixels(dummy, request(scheduler)))
    # and again: ancestral noise comes from the job's generator, not torch's global RNG
    assert np.array_equal(got, pixels(backend, request(scheduler)))


def test_an_fp16_package_is_close_and_reproducible(
    tiny: object, backends: dict[str, object]
) -> None:
    backend = backends["fp16"]
    for scheduler in ("dpmpp_2m", "euler_a"):
        got = pixels(backend, request(scheduler))
        assert np.array_equal(got, pixels(backend, request(scheduler)))
        psnr = image_psnr(got, pixels(tiny, request(scheduler)))
        print(f"fp16 package vs diffusers fp32, {scheduler}: {psnr:.1f} dB")
        # fp16 weights and inputs only (the stand-in computes in fp32). Measured at 6 steps:
        # 59.4 dB (DPM++), 29.2 dB (Euler a: its fresh noise each step amplifies differences);
        # the next seed's image is 7.6 / 4.6 dB away.
        assert psnr > 25


def test_the_backend_sends_each_input_in_the_dtype_the_package_declares(
    folders: dict[str, Path],
) -> None:
    from workers.backends.coreml import declared_inputs

    fp16 = declared_inputs(folders["fp16"] / "Unet.mlpackage")
    assert {k: np.dtype(v).name for k, v in fp16.items()} == {
        "sample": "float16",
        "timestep": "float16",
        "encoder_hidden_states": "float16",
    }
    fp32 = declared_inputs(folders["fp32"] / "TextEncoder.mlpackage")
    assert {k: np.dtype(v).name for k, v in fp32.items()} == {"input_ids": "float32"}


def test_the_stand_in_refuses_what_the_package_does_not_declare(
    tiny: object, folders: dict[str, Path]
) -> None:
    from workers.backends.coreml_folder import VAE_DECODER
    from workers.compression.coreml import _wrappers

    path = folders["fp16"] / "VAEDecoder.mlpackage"
    model = StandInModel(path, _wrappers(tiny.pipe)[VAE_DECODER][0])  # type: ignore[attr-defined]
    channels = tiny.pipe.vae.config.latent_channels  # type: ignore[attr-defined]
    side = 64 // tiny.pipe.vae_scale_factor  # type: ignore[attr-defined]
    z = np.zeros((1, channels, side, side), dtype=np.float16)
    assert model.predict({"z": z})["image"].shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="declared float16"):
        model.predict({"z": z.astype(np.float32)})
    with pytest.raises(ValueError, match="declared"):
        model.predict({"z": np.zeros((2, channels, side, side), dtype=np.float16)})
    with pytest.raises(ValueError, match="not the declared"):
        model.predict({"z": z, "extra": z})
    # Every convolution and linear weight came from the package (decompressed); only norm
    # parameters, which the converter folds into other ops, keep the torch values.
    assert model.loaded and all("norm" in name for name in model.missing)


def test_compiling_off_macos_says_what_to_run_on_the_mac(folders: dict[str, Path]) -> None:
    from workers.compression.coreml import compile_packages

    result = compile_packages(folders["fp16"])
    assert result["compiled"] == []
    assert result["compile"].startswith("compiling to .mlmodelc needs macOS: on the Mac, in ")
    assert "xcrun coremlcompiler compile Unet.mlpackage ." in result["compile"]
    assert not list(folders["fp16"].glob("*.mlmodelc*"))


# -- SDXL: two text encoders, time_ids and text_embeds, as Apple's SDXL packages take them ----


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, object, Path]]:
    """tiny-xl through the diffusers backend, and the Core ML backend on its fp32 conversion."""
    from workers.backends.coreml import CoreMLBackend
    from workers.compression.coreml import convert_pipeline

    diffusers, _ = PipelineCache(device="cpu", threads=1).get("tiny-xl")
    folder = tmp_path_factory.mktemp("coreml") / "tiny-xl-fp32"
    convert_pipeline(diffusers.pipe, folder, model_version="tiny-xl", precision="fp32")  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        install(mp, diffusers.pipe)  # type: ignore[attr-defined]
        yield diffusers, CoreMLBackend("tiny-xl", folder, compute_units="CPU_ONLY"), folder


def test_an_sdxl_folder_has_apples_packages_and_inputs(
    tiny_xl: tuple[object, object, Path],
) -> None:
    from workers.backends.coreml import declared_inputs

    _, _, folder = tiny_xl
    assert {p.name for p in folder.glob("*.mlpackage")} == {
        "TextEncoder.mlpackage",
        "TextEncoder2.mlpackage",
        "Unet.mlpackage",
        "VAEDecoder.mlpackage",
    }
    assert (folder / "tokenizer_2").is_dir()
    assert list(declared_inputs(folder / "Unet.mlpackage")) == [
        "sample",
        "timestep",
        "encoder_hidden_states",
        "time_ids",
        "text_embeds",
    ]
    # SDXL's VAE is marked force_upcast: its decoder computes in fp32 even in fp16 folders
    assert set(declared_inputs(folder / "VAEDecoder.mlpackage").values()) == {np.float32}


@pytest.mark.parametrize(
    ("scheduler", "negative"),
    [("euler", ""), ("dpmpp_2m", ""), ("euler_a", "a blue square"), ("ddim", "a blue square")],
)
def test_an_fp32_sdxl_package_makes_the_diffusers_image_bit_for_bit(
    scheduler: str, negative: str, tiny_xl: tuple[object, object, Path]
) -> None:
    diffusers, coreml, _ = tiny_xl
    req = GenerationRequest(
        prompt="a red circle on a blue background",
        negative_prompt=negative,  # empty: SDXL's zeros; else its encoding, by both encoders
        seed=5,
        steps=6,
        guidance_scale=5.0,
        width=64,
        height=64,
        scheduler=scheduler,
    )
    assert np.array_equal(pixels(coreml, req), pixels(diffusers, req))


def test_a_palettized_package_holds_and_draws_the_torch_variants_weights(
    dummy: object, dummy_coreml: Callable[[str], Path], tmp_path: Path
) -> None:
    """Per-tensor lookup tables are ours in both formats, so a palettized package's weights are
    exactly the torch variant's; its image differs only by the package's fp16 (the other
    weights and the inputs), as the unpalettized fp16 package's does."""
    import copy
    import shutil

    import torch

    from workers.backends.coreml import CoreMLBackend
    from workers.compression.coreml import load_package_weights, palettize_unet
    from workers.compression.palettize import apply_recipe, uniform_recipe

    pipe = dummy.pipe  # type: ignore[attr-defined]
    folder = tmp_path / "dummy-4bit"
    shutil.copytree(dummy_coreml("fp16"), folder)
    recipe = uniform_recipe(pipe.unet, 4)
    palettize_unet(folder, pipe.unet, recipe)
    from_package = copy.deepcopy(pipe.unet)
    load_package_weights(from_package, folder / "Unet.mlpackage")
    variant = copy.deepcopy(pipe)
    apply_recipe(variant.unet, recipe)
    a, b = dict(from_package.named_modules()), dict(variant.unet.named_modules())
    assert all(torch.equal(a[n].weight, b[n].weight) for n in recipe)

    from workers.backends.diffusers import DiffusersBackend

    torch_variant = DiffusersBackend("dummy", device="cpu", threads=1, pipeline=variant)
    with pytest.MonkeyPatch.context() as mp:
        made = install(mp, pipe)
        coreml = CoreMLBackend("dummy", folder, compute_units="CPU_ONLY")
        got = pixels(coreml, request("dpmpp_2m"))
    # the stand-in evaluates the package's own (decompressed) weights, every one of them
    assert all("norm" in name for name in made["Unet"].missing)
    want = pixels(torch_variant, request("dpmpp_2m"))
    psnr = image_psnr(got, want)
    print(f"4-bit package vs the torch 4-bit variant, DPM++ 6 steps: {psnr:.1f} dB")
    unpalettized = image_psnr(want, pixels(dummy, request("dpmpp_2m")))
    print(f"the torch 4-bit variant vs the dummy unpalettized: {unpalettized:.1f} dB")
    # measured 65.1 dB, and 30.9 dB from the 4-bit variant to the unpalettized dummy: the
    # package draws with the variant's tables, not merely close to the model
    assert psnr > 40 > unpalettized


def test_a_model_whose_vae_scales_by_4_converts_and_draws_bit_for_bit(
    dummy: object, folders: dict[str, Path], backends: dict[str, object]
) -> None:
    """Nothing assumes SD's x8: the dummy's three-level VAE (16x16 latent for 64 px) converts to
    packages of its own latent size, the folder says its scale, and the Core ML backend draws
    the diffusers image from it."""
    import json

    assert dummy.pipe.vae_scale_factor == 4  # type: ignore[attr-defined]
    layout = json.loads((folders["fp32"] / "orchestrate-coreml.json").read_text())
    assert layout["vae_scale_factor"] == 4
    assert layout["inputs"]["Unet"]["sample"][-2:] == [16, 16]
    coreml = backends["fp32"]
    assert coreml.folder.vae_scale == 4  # type: ignore[attr-defined]
    got = pixels(coreml, request("dpmpp_2m"))
    assert got.shape == (64, 64, 3)
    assert np.array_equal(got, pixels(dummy, request("dpmpp_2m")))
