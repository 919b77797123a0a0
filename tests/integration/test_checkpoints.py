"""Single-file checkpoints (.safetensors in the original SD layout, as A1111 users keep them):
exported from our own models, loaded offline with the family's configuration (issue 12)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from contract.errors import ModelLoadError
from orchestrator.manifest import parse_manifest
from orchestrator.preflight import model_problem
from tests.conftest import sample_job
from workers.compression.commands import export_checkpoint_file
from workers.models.checkpoints import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, family
from workers.task import PipelineCache, run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    result = export_checkpoint_file("tiny", out)
    assert result["family"] == "tiny"
    return out


def job(model: str) -> dict[str, Any]:
    return sample_job(model=model, prompt="a lighthouse at dusk", seed=11, steps=6)


def test_the_file_is_in_the_original_layout(checkpoint: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as fh:
        keys = list(fh.keys())
        # level 0 has one resnet and no attention, its downsampler slot 2: the first
        # attention is level 1's first block
        proj_in = fh.get_tensor(UNET_PREFIX + "input_blocks.3.1.proj_in.weight")
    assert family(checkpoint) == "tiny"
    assert {k.split(".", 1)[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    assert UNET_PREFIX + "input_blocks.0.0.weight" in keys
    assert UNET_PREFIX + "input_blocks.2.0.op.weight" in keys
    assert not any(k.startswith(UNET_PREFIX + "input_blocks.1.1.") for k in keys)
    assert UNET_PREFIX + "output_blocks.5.1.proj_out.weight" in keys
    assert VAE_PREFIX + "decoder.up.0.block.1.conv2.weight" in keys
    assert CLIP_PREFIX + "text_model.embeddings.position_embedding.weight" in keys
    assert proj_in.ndim == 4  # 1x1 convolutions, as in SD 1.x
    # the built-in model's VAE is convolutional only (no mid-block attention), and says so
    assert not any(k.startswith(VAE_PREFIX + "encoder.mid.attn_1") for k in keys)


def test_a_job_on_the_checkpoint_makes_the_same_pixels_as_the_folder(checkpoint: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    cache = PipelineCache(device="cpu", threads=1)
    a = run_job(job(str(checkpoint)), cache).png
    b = run_job(job("tiny"), cache).png
    pixels = [np.asarray(Image.open(io.BytesIO(png))) for png in (a, b)]
    assert pixels[0].shape == (64, 64, 3)
    assert (pixels[0] == pixels[1]).all()


def test_loading_is_the_inverse_of_exporting_for_any_per_level_layout() -> None:
    """Per-level resnet counts (the tiny UNet: 1/2/2/2, which diffusers' own single-file
    conversion cannot place) and a VAE with mid-block attention (1x1 convolutions in the file,
    linear layers in diffusers): every tensor comes back where it was, bit for bit."""
    import copy

    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from workers.models.checkpoints import from_single_file, to_single_file
    from workers.tiny import ensure_tiny_model

    pipe = StableDiffusionPipeline.from_pretrained(
        str(ensure_tiny_model()), safety_checker=None, requires_safety_checker=False
    )
    assert len(set(pipe.unet.config.layers_per_block)) > 1
    torch.manual_seed(0)
    pipe.vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        latent_channels=4,
        mid_block_add_attention=True,
    )
    state = to_single_file(pipe)
    assert state[VAE_PREFIX + "decoder.mid.attn_1.q.weight"].ndim == 4
    other = copy.deepcopy(pipe)
    for part in (other.unet, other.vae, other.text_encoder):
        for tensor in part.state_dict().values():
            tensor.zero_()
    from_single_file(state, other)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(other, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_a_tiny_checkpoint_missing_a_layer_says_which(checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from workers.backends.diffusers import load_pipeline

    state = load_file(str(checkpoint))
    del state[UNET_PREFIX + "input_blocks.3.1.proj_in.weight"]
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata={"format": "pt", "orchestrate_family": "tiny"})
    with pytest.raises(
        ModelLoadError, match=r"lacks UNet layer 'down_blocks\.1\.attentions\.0\.proj_in\.weight'"
    ):
        load_pipeline(str(broken), torch.float32)


def test_a_manifest_row_gets_the_checkpoints_native_size_and_preflight_accepts_it(
    checkpoint: Path, tmp_path: Path
) -> None:
    (spec,) = parse_manifest(f"prompt,model\na,{checkpoint}\n", "j.csv").jobs
    assert (spec.width, spec.height) == (64, 64)
    assert model_problem(str(checkpoint)) is None
    fake = tmp_path / "broken.safetensors"
    fake.write_bytes(b"not a checkpoint")
    assert "not a readable .safetensors" in (model_problem(str(fake)) or "")
    assert "no such" in (model_problem(str(tmp_path / "gone.safetensors")) or "")


def test_a_checkpoint_of_another_family_offline_says_what_to_fetch(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No family mark (a file from elsewhere): diffusers infers SD 1.x and needs its
    configuration from the Hugging Face cache, which is empty here."""
    from safetensors.torch import load_file, save_file

    from workers.backends.diffusers import load_pipeline

    unmarked = tmp_path / "elsewhere.safetensors"
    save_file(load_file(str(checkpoint)), str(unmarked))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="not in this machine's Hugging Face cache"):
        load_pipeline(str(unmarked), torch.float32)
