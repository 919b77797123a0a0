"""What a model's weights take on a device, from its safetensors headers alone, and the run's
warning when they would leave no room."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from orchestrator.preflight import memory_warnings
from workers import memory
from workers.models import families


def header_only(path: Path, shapes: dict[str, list[int]], dtype: str = "BF16") -> None:
    """A safetensors file's header (the tensors' bytes are never read here)."""
    header = {
        name: {"dtype": dtype, "shape": s, "data_offsets": [0, 0]} for name, s in shapes.items()
    }
    header["__metadata__"] = {"format": "pt"}  # type: ignore[assignment]
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def flux_like(folder: Path) -> Path:
    """FLUX.1's components at their real element counts (12 B transformer, 4.7 B T5)."""
    folder.mkdir(parents=True)
    index = {
        "_class_name": "FluxPipeline",
        **{
            c: ["diffusers", "X"]
            for c in ("transformer", "text_encoder", "text_encoder_2", "vae", "scheduler")
        },
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "transformer").mkdir()
    (folder / "transformer" / "config.json").write_text(
        json.dumps({"joint_attention_dim": 4096, "guidance_embeds": True})
    )
    header_only(
        folder / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors",
        {"a": [6_000_000_000]},
    )
    header_only(
        folder / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors",
        {"b": [5_900_000_000]},
    )
    header_only(folder / "text_encoder_2" / "model.safetensors", {"t5": [4_760_000_000]})
    header_only(folder / "text_encoder" / "model.safetensors", {"clip": [123_000_000]})
    header_only(folder / "vae" / "diffusion_pytorch_model.safetensors", {"v": [84_000_000]})
    # neither a variant's copy nor a folder the pipeline does not load is counted
    header_only(folder / "vae" / "diffusion_pytorch_model.fp16.safetensors", {"v": [84_000_000]})
    header_only(folder / "safety_checker" / "model.safetensors", {"s": [300_000_000]})
    (folder / "text_encoder" / "broken.safetensors").write_bytes(b"\x02" + b"\0" * 7 + b"[1]")
    return folder


def test_elements_are_read_per_component_from_the_headers(tmp_path: Path) -> None:
    folder = flux_like(tmp_path / "flux")
    assert memory.component_elements(folder) == {
        "transformer": 11_900_000_000,
        "text_encoder_2": 4_760_000_000,
        "text_encoder": 123_000_000,
        "vae": 84_000_000,
    }
    elements = memory.component_elements(folder)
    assert memory.offloads("cuda", True, True) and not memory.offloads("mps", True, True)
    assert not memory.offloads("cuda", False, True)  # a UNet's --low-memory slices attention
    assert memory.need_bytes(elements, "bf16", False) == 2 * 16_867_000_000
    assert memory.need_bytes(elements, "bf16", True) == 2 * 11_900_000_000
    assert memory.need_bytes(elements, "fp32", False) == 4 * 16_867_000_000
    assert memory.run_dtype("cuda", True) == "bf16" and memory.run_dtype("mps", False) == "fp16"
    assert memory.run_dtype("cpu", True) == "fp32"
    assert families.detect_folder(folder).family.name == "flux1"


def test_a_model_too_large_for_the_device_is_warned_about_with_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = flux_like(tmp_path / "flux")
    monkeypatch.setattr(memory, "device_bytes", lambda device: 32 * 10**9)  # a 32 GB GPU
    (line,) = memory_warnings([str(folder), "tiny", str(folder)], "cuda")
    assert line.startswith(f"model {str(folder)!r}: its weights take 33.7 GB in bf16 on cuda")
    assert "transformer 23.8, text_encoder_2 9.5, text_encoder 0.2, vae 0.2 GB" in line
    assert "more than 80% of its 32.0 GB" in line
    assert line.endswith(
        "--low-memory keeps each component on the cuda only while it runs (23.8 GB at most)"
    )
    # with --low-memory the largest component fits: nothing to say
    assert memory_warnings([str(folder)], "cuda", low_memory=True) == []
    # a Mac's memory is one pool: --low-memory moves nothing off it
    (mac,) = memory_warnings([str(folder)], "mps", low_memory=True)
    assert "33.7 GB in bf16 on mps" in mac and "run a compressed variant" in mac
    # a big enough GPU: nothing to say
    monkeypatch.setattr(memory, "device_bytes", lambda device: 80 * 10**9)
    assert memory_warnings([str(folder)], "cuda") == []


def test_built_in_and_unknown_models_are_not_measured(tmp_path: Path) -> None:
    assert (
        memory_warnings(["tiny", "tiny-flux", "me/not-cached", str(tmp_path / "none")], "cpu") == []
    )
