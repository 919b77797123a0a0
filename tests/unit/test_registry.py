"""The compressed-variant registry: a variant is found only while the model's files are the
ones it was made from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.compression import registry


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ORCHESTRATE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my-model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights v1" * 100)
    return folder


def test_a_variant_of_a_retrained_model_is_not_found(model: Path, tmp_path: Path) -> None:
    variant = tmp_path / "cache" / "variants" / "my-model@recipe_4"
    variant.mkdir(parents=True)
    entry = registry.register(str(model), "recipe_4", "torch", variant, avg_bits=4.5)
    assert entry["source_fingerprint"]
    assert registry.lookup(str(model), "recipe_4", "torch") == variant
    assert registry.stale_note(str(model), "recipe_4", "torch") == ""
    # the model is retrained under the same name: its variant no longer stands for it
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"weights v2" * 100)
    assert registry.lookup(str(model), "recipe_4", "torch") is None
    note = registry.stale_note(str(model), "recipe_4", "torch")
    assert "made from other weights" in note and str(variant) in note
    # made again, it is found again
    registry.register(str(model), "recipe_4", "torch", variant)
    assert registry.lookup(str(model), "recipe_4", "torch") == variant


def test_an_entry_without_a_fingerprint_or_a_model_here_is_still_found(
    model: Path, tmp_path: Path
) -> None:
    variant = tmp_path / "v"
    variant.mkdir()
    registry.register(str(model), "8bit", "torch", variant)
    rows = registry.entries()
    rows[0].pop("source_fingerprint")  # registered by an older release
    registry.registry_path().write_text(json.dumps({"variants": rows}))
    assert registry.lookup(str(model), "8bit", "torch") == variant
    # a variant of a hub model that is not cached here: nothing to compare, so it is kept
    registry.register("someone/not-cached-here", "8bit", "torch", variant)
    assert registry.entries()[-1]["source_fingerprint"] is None
    assert registry.lookup("someone/not-cached-here", "8bit", "torch") == variant
