"""``orchestrate reproduce``: regenerate an image from its PNG alone and compare the pixels."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from contract.errors import UsageError
from orchestrator.reproduce import compare_pixels, read_recorded
from tests.helpers import Cli, cli_for
from workers.metadata import read_png_metadata

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """One image from the real tiny pipeline, made with a non-default thread count."""
    home = tmp_path_factory.mktemp("generated")
    proc = cli_for(home, model_cache, in_process=True)(
        "generate",
        "--prompt",
        "a lighthouse, at dusk",
        "--negative-prompt",
        "blurry",
        "--steps",
        "4",
        "--seed",
        "7",
        "--threads",
        "1",
    )
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert read_png_metadata(path.read_bytes())["meta"]["run"]["torch_threads"] == 1
    return path


def copy_to(src: Path, folder: Path) -> Path:
    dst = folder / "image.png"
    shutil.copy(src, dst)
    return dst


def test_reproduces_identical_pixels_from_the_png_alone(
    cli: Cli, tmp_path: Path, generated: Path
) -> None:
    image = copy_to(generated, tmp_path)
    proc = cli("reproduce", "image.png", "--compare")
    assert proc.stdout.splitlines() == [
        "image.png: reproduced, pixels identical",
        "regenerated image: image.reproduced.png",
    ]
    copy = tmp_path / "image.reproduced.png"
    identical, same_size, psnr, max_abs = compare_pixels(image.read_bytes(), copy.read_bytes())
    assert (identical, same_size, psnr, max_abs) == (True, True, None, 0)
    assert read_png_metadata(copy.read_bytes())["meta"]["job"]["prompt"] == "a lighthouse, at dusk"
    assert not (tmp_path / "orchestrate.db").exists()  # no database was needed or made


def test_altered_pixels_exit_1_with_psnr(cli: Cli, tmp_path: Path, generated: Path) -> None:
    with Image.open(generated) as img:
        text = dict(img.text)  # type: ignore[attr-defined]
        pixels = np.asarray(img.convert("RGB")).copy()
    original = pixels.copy()
    pixels[:8, :8] = 255 - pixels[:8, :8]
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.fromarray(pixels).save(tmp_path / "edited.png", pnginfo=info)

    proc = cli("reproduce", "edited.png", check=1)
    mse = float(np.mean((pixels.astype(np.float64) - original) ** 2))
    max_abs = int(np.abs(pixels.astype(np.int16) - original).max())
    assert proc.stdout.splitlines()[0] == (
        f"edited.png: differs: PSNR {10 * math.log10(255**2 / mse):.2f} dB, "
        f"max abs pixel difference {max_abs}"
    )
    assert not (tmp_path / "edited.reproduced.png").exists()  # only with --compare


def test_png_without_our_metadata_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, "PNG")
    (tmp_path / "plain.png").write_bytes(buf.getvalue())
    (tmp_path / "notes.png").write_text("not an image", encoding="utf-8")

    proc = cli("reproduce", "plain.png", check=2)
    assert proc.stderr == (
        "error: plain.png: no orchestrate metadata in this PNG (only images this tool made "
        "can be reproduced)\n"
    )
    proc = cli("reproduce", "notes.png", check=2)
    assert proc.stderr == "error: notes.png: not an image file\n"
    proc = cli("reproduce", "missing.png", check=2)
    assert proc.stderr.startswith("error: missing.png: cannot read: ")
    assert "Traceback" not in proc.stderr


def test_damaged_or_incomplete_metadata_is_a_clear_error(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 32)
    with pytest.raises(UsageError, match=r"damaged\.png: damaged PNG or metadata: "):
        read_recorded(damaged)

    def with_chunk(name: str, text: str) -> Path:
        info = PngInfo()
        info.add_text("orchestrate", text)
        Image.new("RGB", (8, 8)).save(tmp_path / name, pnginfo=info)
        return tmp_path / name

    with pytest.raises(UsageError, match=r"bad_json\.png: damaged PNG or metadata: "):
        read_recorded(with_chunk("bad_json.png", "{not json"))
    partial = json.dumps({"job": {"prompt": "x", "seed": 1}, "run": {}})
    with pytest.raises(
        UsageError,
        match=r"partial\.png: the recorded job lacks negative_prompt, steps, guidance_scale, "
        "width, height, scheduler, model$",
    ):
        read_recorded(with_chunk("partial.png", partial))


def test_compare_pixels_reports_psnr_and_size_changes() -> None:
    def png(pixels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    a = np.zeros((8, 8, 3))
    b = a.copy()
    b[0, 0, 0] = 10  # one channel of one pixel: MSE = 100 / 192
    identical, same_size, psnr, max_abs = compare_pixels(png(a), png(b))
    assert (identical, same_size, max_abs) == (False, True, 10)
    assert psnr == pytest.approx(10 * math.log10(255**2 * 192 / 100))
    assert compare_pixels(png(a), png(np.zeros((8, 16, 3)))) == (False, False, None, None)


def test_a_core_ml_image_off_macos_is_a_stated_cross_backend_comparison(
    cli: Cli, tmp_path: Path, generated: Path
) -> None:
    """An image whose metadata says Core ML made it (device = its compute units) regenerates
    with the diffusers backend off macOS, says so, and never hands CPU_AND_NE to torch."""
    from workers.metadata import JSON_KEY

    with Image.open(generated) as img:
        text = dict(img.text)  # type: ignore[attr-defined]
        pixels = np.asarray(img.convert("RGB")).copy()
    meta = json.loads(text[JSON_KEY])
    meta["run"].update(backend="coreml", device="CPU_AND_NE", dtype="fp16")
    text[JSON_KEY] = json.dumps(meta)
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.fromarray(pixels).save(tmp_path / "coreml.png", pnginfo=info)

    proc = cli("reproduce", "coreml.png", check=None)
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 1)
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        "made with Core ML (CPU_AND_NE); regenerated with the diffusers backend on this "
        "machine: a cross-backend comparison, so expect a PSNR, not identical pixels"
    )
    # (these pixels were in fact made by the diffusers backend here, so they match)
    assert lines[1] == "coreml.png: reproduced, pixels identical"


def test_a_model_changed_since_the_image_is_said_with_its_fingerprints(
    cli: Cli, tmp_path: Path
) -> None:
    """A model retrained or replaced under the same path: reproduce says that the model's files
    are not those that made the image, not only that the pixels differ."""
    from safetensors.torch import load_file, save_file

    from workers.tiny import ensure_tiny_model

    model = tmp_path / "my-model"
    shutil.copytree(ensure_tiny_model(), model)
    proc = cli(
        "generate", "a red circle on a blue background", "--steps", "4", "--model", str(model)
    )
    image = Path(proc.stdout.strip().splitlines()[-1])
    recorded = read_png_metadata(image.read_bytes())["meta"]["run"]["versions"]
    assert len(recorded["model_fingerprint"]) == 16

    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 1.01 for k, v in tensors.items()}, weights)
    proc = cli("reproduce", str(image), check=1)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"the model {str(model)!r} here is not the one that made this image")
    assert f"fingerprint was {recorded['model_fingerprint']}, is " in lines[0]
    assert lines[1].startswith(f"{image}: differs: PSNR ")
    assert "model_fingerprint: " in lines[2]
