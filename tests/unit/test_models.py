"""``workers.models.model_fingerprint``: which files made an image, cheaply."""

from __future__ import annotations

from pathlib import Path

from workers.models import model_fingerprint


def make_folder(root: Path, weights: bytes) -> Path:
    folder = root / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (folder / "unet" / "config.json").write_text('{"sample_size": 8}')
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    return folder


def test_the_fingerprint_follows_the_model_files_and_nothing_else(tmp_path: Path) -> None:
    big = bytes(range(256)) * (5 * 4096)  # 5 MB: read as three 1 MB samples
    folder = make_folder(tmp_path / "a", big)
    first = model_fingerprint(str(folder))
    assert first is not None and len(first) == 16
    assert model_fingerprint(str(make_folder(tmp_path / "b", big))) == first  # content, not place

    # documentation, images, our training record and hidden files are not the model
    (folder / "README.md").write_text("notes")
    (folder / "training.json").write_text("{}")
    (folder / "sheet.png").write_bytes(b"png")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("y")
    assert model_fingerprint(str(folder)) == first

    # a weight changed in the middle of a large file, a config, a file added: another model
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    changed = bytearray(big)
    changed[len(big) // 2] ^= 1
    weights.write_bytes(bytes(changed))
    assert model_fingerprint(str(folder)) not in (None, first)
    weights.write_bytes(big)
    (folder / "unet" / "config.json").write_text('{"sample_size": 16}')
    assert model_fingerprint(str(folder)) != first
    (folder / "unet" / "config.json").write_text('{"sample_size": 8}')
    assert model_fingerprint(str(folder)) == first
    (folder / "vae").mkdir()
    (folder / "vae" / "config.json").write_text("{}")
    assert model_fingerprint(str(folder)) != first


def test_a_single_file_and_what_is_not_on_disk(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights")
    assert model_fingerprint(str(checkpoint)) is not None
    assert model_fingerprint(str(tmp_path / "missing")) is None
    # a hub id not in this machine's cache: nothing to read, no fingerprint, no error
    assert model_fingerprint("nobody/not-a-cached-model") is None
