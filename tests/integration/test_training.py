"""The training script's pieces: its tokenizer, its data, and that a run is deterministic.

CI does not retrain the shipped model (that takes tens of minutes); a run of a few steps
exercises the same code, and two such runs must write the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPTokenizer

from workers.tiny import write_clip_vocabulary
from workers.tiny.flow_training import FlowTrainConfig, train_flow
from workers.tiny.judge import HELD_OUT_PROMPTS
from workers.tiny.scenes import parse_prompt
from workers.tiny.training import (
    TrainConfig,
    draw_scenes,
    learn_merges,
    shifted_betas,
    train,
    vocabulary_words,
)


def test_learned_merges_make_every_word_of_the_world_one_token(tmp_path: Path) -> None:
    words = vocabulary_words()
    assert {"two", "yellow", "squares", "background", "center"} <= set(words)
    size = write_clip_vocabulary(tmp_path, learn_merges(words))
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path, model_max_length=77)
    assert len(tokenizer) == size
    for word in words:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    # a word from outside the world still tokenizes, in pieces, and round-trips
    pieces = tokenizer.tokenize("lighthouse")
    assert len(pieces) > 1
    assert "".join(pieces).replace("</w>", "") == "lighthouse"


def test_training_scenes_never_hold_a_held_out_prompt() -> None:
    images, prompts = draw_scenes(np.random.default_rng(3), 3000, 64)
    assert images.shape == (3000, 3, 64, 64)
    assert not set(prompts) & set(HELD_OUT_PROMPTS)
    assert all(parse_prompt(p) is not None for p in prompts)
    # the draw covers the world: every held-out prompt's attributes occur in training
    assert len(set(prompts)) > 1000


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*.safetensors"))
    }


@pytest.mark.slow
def test_a_short_training_run_is_deterministic_and_loads_as_a_pipeline(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    # the VAE checkpoint is still selected by the judge, on 8 validation scenes (not 120)
    config = TrainConfig(
        vae_steps=3,
        vae_batch=4,
        vae_select_scenes=8,
        scenes=64,
        unet_steps=3,
        unet_batch=4,
        warmup=1,
        threads=1,
    )
    losses = []
    for name in ("a", "b"):
        report = train(tmp_path / name, config)
        losses.append(report.unet_losses)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert len(_digests(tmp_path / "a")) == 3  # vae, unet, text encoder
    assert losses[0] == losses[1] and len(losses[0]) == 3
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "a")
    assert pipe.vae_scale_factor == config.vae_factor == 4  # three VAE levels by default
    assert pipe.vae.config.scaling_factor == pytest.approx(report.latent_scaling_factor)
    assert (tmp_path / "a" / "training.json").is_file()
    # another seed is another model
    other = train(tmp_path / "c", TrainConfig(**{**config.__dict__, "seed": config.seed + 1}))
    assert other.unet_losses != losses[0]
    assert _digests(tmp_path / "c") != _digests(tmp_path / "a")


@pytest.mark.slow
def test_a_short_flow_training_run_is_deterministic_and_loads_as_an_sd3_pipeline(
    tmp_path: Path,
) -> None:
    """The flow recipe (``scripts/train_tiny.py --recipe flow``) at its smallest: the same seed
    writes the same bytes; the folder is a StableDiffusion3Pipeline of the toy family whose
    VAE is the shipped tiny's, untouched but for SD3's shift, on 16x16 latents."""
    import torch
    from diffusers import StableDiffusion3Pipeline
    from safetensors.torch import load_file

    from workers.models.families import detect_folder
    from workers.tiny import SHIPPED_TINY

    config = FlowTrainConfig(
        steps=2, batch=2, scenes=16, scale_scenes=16, warmup=1, threads=1, width=32, layers=1
    )
    losses = []
    for name in ("a", "b"):
        report = train_flow(tmp_path / name, config)
        losses.append(report.losses)
    digests = _digests(tmp_path / "a")
    assert digests == _digests(tmp_path / "b")
    assert len(digests) == 5  # transformer, three text encoders, the VAE
    assert losses[0] == losses[1] and len(losses[0]) == 2
    info = detect_folder(tmp_path / "a")
    assert (info.family.name, info.guidance) == ("tiny-sd3", "cfg")
    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path / "a")
    assert pipe.vae_scale_factor == 4 and pipe.transformer.config.in_channels == 8
    assert pipe.vae.config.shift_factor == 0.0 and pipe.tokenizer.model_max_length == 32
    name = "vae/diffusion_pytorch_model.safetensors"
    ours, shipped = load_file(tmp_path / "a" / name), load_file(SHIPPED_TINY / name)
    assert ours.keys() == shipped.keys()
    assert all(torch.equal(ours[k], shipped[k]) for k in ours)
    assert json.loads((tmp_path / "a" / "training.json").read_text())["recipe"] == "flow"
    other = train_flow(tmp_path / "c", FlowTrainConfig(**{**config.__dict__, "seed": 7}))
    assert other.losses != losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("snr_shift", [1.0, 4.0])
def test_a_zero_terminal_snr_model_keeps_its_schedule_in_every_sampler(
    tmp_path: Path, snr_shift: float
) -> None:
    """Trained on rescaled betas (the last step pure noise), the saved model says so, and the
    worker's samplers build that schedule from it (not SD 1.x's, which leaves a trace of the
    image at t=999 that pure-noise inference lacks); a shifted schedule travels as its betas."""
    import torch
    from diffusers import StableDiffusionPipeline

    from workers.models.schedulers import DIFFUSION_SCHEDULERS, build_scheduler

    config = TrainConfig(
        vae_steps=1,
        vae_batch=2,
        vae_select_scenes=2,
        scenes=64,
        unet_steps=2,
        unet_batch=2,
        warmup=1,
        threads=1,
        min_snr_gamma=None,
        zero_terminal_snr=True,
        snr_shift=snr_shift,
    )
    train(tmp_path / "z", config)
    scheduler_config = dict(
        StableDiffusionPipeline.from_pretrained(tmp_path / "z").scheduler.config
    )
    expected = shifted_betas(True, snr_shift)
    if expected is None:
        assert scheduler_config["rescale_betas_zero_snr"] is True
        assert scheduler_config["trained_betas"] is None
    else:
        assert scheduler_config["rescale_betas_zero_snr"] is False
        assert scheduler_config["trained_betas"] == pytest.approx(expected)
    for name in DIFFUSION_SCHEDULERS:
        alpha_bar = build_scheduler(name, scheduler_config).alphas_cumprod
        assert float(alpha_bar[-1]) < 1e-6, name
        if expected is not None:
            want = torch.tensor(expected, dtype=torch.float64).neg().add(1).cumprod(0)
            assert torch.allclose(alpha_bar.double(), want, rtol=1e-5), name


def test_a_shifted_schedule_divides_every_steps_snr_and_ends_in_pure_noise() -> None:
    import torch
    from diffusers import DDPMScheduler

    assert shifted_betas(True, 1.0) is None  # no shift: the named schedule says it all
    for zero_terminal_snr in (True, False):
        base = DDPMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            rescale_betas_zero_snr=zero_terminal_snr,
        ).alphas_cumprod.double()
        betas = shifted_betas(zero_terminal_snr, 4.0)
        assert betas is not None and len(betas) == 1000
        alpha_bar = torch.tensor(betas, dtype=torch.float64).neg().add(1).cumprod(0)
        snr, base_snr = alpha_bar / (1 - alpha_bar), base / (1 - base)
        assert torch.allclose(snr[:-1], base_snr[:-1] / 4, rtol=1e-9)
        if zero_terminal_snr:
            assert float(alpha_bar[-1]) == pytest.approx(2**-24)
        else:
            assert float(snr[-1]) == pytest.approx(float(base_snr[-1]) / 4)
    with pytest.raises(ValueError, match="snr_shift must be positive"):
        TrainConfig(snr_shift=0)


def test_zero_terminal_snr_refuses_min_snr_weights() -> None:
    with pytest.raises(ValueError, match="min_snr_gamma=None"):
        TrainConfig(min_snr_gamma=5.0)  # zero terminal SNR is the default
    TrainConfig(zero_terminal_snr=True, min_snr_gamma=None)
    TrainConfig(zero_terminal_snr=False, min_snr_gamma=5.0)


def test_vae_selection_keeps_the_checkpoint_the_judge_reads_best(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    from workers.tiny import training

    config = TrainConfig(
        vae_steps=4, vae_batch=2, warmup=1, threads=1, vae_select_every=1, vae_select_scenes=2
    )
    vae = training.build_components(config, tmp_path / "tok")["vae"]
    snapshots: list[dict[str, torch.Tensor]] = []
    scores = iter([0.2, 0.9, 0.5, 0.9])  # the second checkpoint is best (a tie keeps the first)

    def score(model: object, images: np.ndarray, prompts: list[str]) -> float:
        assert len(images) == len(prompts) == 2
        snapshots.append({k: v.clone() for k, v in vae.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(training, "reconstruction_adherence", score)
    losses, checkpoints = training.train_vae(vae, config, np.random.default_rng(0), lambda *_: None)
    assert [s for s, _ in checkpoints] == [1, 2, 3, 4] and len(losses) == 4
    kept = vae.state_dict()
    assert all(torch.equal(kept[k], snapshots[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], snapshots[3][k]) for k in kept)


def test_reconstruction_adherence_of_a_lossless_round_trip_is_the_judges_own() -> None:
    import torch

    from workers.tiny.training import reconstruction_adherence

    class Lossless:  # encodes an image as itself
        def encode(self, x: torch.Tensor) -> object:
            return type("Out", (), {"latent_dist": type("D", (), {"mean": x})()})()

        def decode(self, z: torch.Tensor) -> object:
            return type("Out", (), {"sample": z})()

    images, prompts = draw_scenes(np.random.default_rng(5), 40, 64)
    score = reconstruction_adherence(Lossless(), images, prompts)
    assert score > 0.95  # clean renders: the judge reads (nearly) all of them
    shuffled = reconstruction_adherence(Lossless(), images[::-1].copy(), prompts)
    assert shuffled < score - 0.2  # the score is about the prompt, not the image alone


def test_the_unet_has_one_cross_attention_level_per_channel_count(tmp_path: Path) -> None:
    from workers.tiny.training import build_components

    config = TrainConfig(unet_channels=(32, 64, 64), unet_attention=None, unet_layers=2)
    unet = build_components(config, tmp_path)["unet"]
    assert [type(b).__name__ for b in unet.down_blocks] == ["CrossAttnDownBlock2D"] * 3
    assert unet.config.attention_head_dim == (2, 4, 4)  # heads of 16 channels


def test_a_three_level_vae_makes_a_16x16_latent_and_the_unet_can_vary_its_levels(
    tmp_path: Path,
) -> None:
    import torch

    from workers.tiny.training import build_components

    config = TrainConfig(
        vae_channels=(32, 32, 64),
        unet_channels=(32, 64, 64),
        unet_attention=(False, True, True),
        unet_layers=(1, 2, 2),
    )
    assert config.vae_factor == 4
    parts = build_components(config, tmp_path)
    vae, unet = parts["vae"], parts["unet"]
    assert [type(b).__name__ for b in unet.down_blocks] == [
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    ]
    assert [type(b).__name__ for b in unet.up_blocks] == [
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "UpBlock2D",
    ]
    assert [len(b.resnets) for b in unet.down_blocks] == [1, 2, 2]
    assert [len(b.resnets) for b in unet.up_blocks] == [3, 3, 2]
    assert unet.config.sample_size == 16
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        assert latents.shape == (1, 8, 16, 16)
        out = unet(latents, 10, encoder_hidden_states=torch.zeros(1, 77, 32)).sample
        assert out.shape == latents.shape
        assert vae.decode(latents).sample.shape == (1, 3, 64, 64)


def test_a_recipe_that_does_not_fit_together_is_refused() -> None:
    with pytest.raises(ValueError, match="unet_attention has 1 entries and unet_channels 4"):
        TrainConfig(unet_attention=(True,))
    with pytest.raises(ValueError, match="unet_layers has 3 entries and unet_channels 4"):
        TrainConfig(unet_layers=(1, 2, 2))
    with pytest.raises(ValueError, match="size 62 is not a multiple of the VAE's factor 4"):
        TrainConfig(size=62)
    with pytest.raises(ValueError, match="size 60 is not a multiple of the VAE's factor 8"):
        TrainConfig(size=60, vae_channels=(32, 32, 64, 64))


def test_the_unet_denoises_as_many_latent_channels_as_the_vae_makes(tmp_path: Path) -> None:
    import torch

    from workers.tiny.training import build_components

    parts = build_components(TrainConfig(latent_channels=8, vae_layers=2), tmp_path)
    vae, unet = parts["vae"], parts["unet"]
    assert all(len(block.resnets) == 2 for block in vae.encoder.down_blocks)
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        assert latents.shape == (1, 8, 16, 16)
        out = unet(latents, 10, encoder_hidden_states=torch.zeros(1, 77, 32)).sample
    assert out.shape == latents.shape


def test_the_training_script_takes_config_fields_as_json_values() -> None:
    import argparse
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "train_tiny.py"
    spec = importlib.util.spec_from_file_location("train_tiny", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ap = argparse.ArgumentParser()
    got = script.overrides(
        ap,
        TrainConfig,
        ["min_snr_gamma=null", "unet_channels=[32,64,64,96]", "vae_steps=10", "snr_shift=2"],
    )
    assert got == {
        "min_snr_gamma": None,
        "unet_channels": (32, 64, 64, 96),
        "vae_steps": 10,
        "snr_shift": 2,
    }
    TrainConfig(**got)
    for bad in ("seed=3", "nothing=1", "vae_steps", "vae_steps=ten"):
        with pytest.raises(SystemExit):
            script.overrides(ap, TrainConfig, [bad])
    # the flow recipe's fields are its own
    assert script.overrides(ap, FlowTrainConfig, ["layers=4", "shift=2.5"]) == {
        "layers": 4,
        "shift": 2.5,
    }
    with pytest.raises(SystemExit):
        script.overrides(ap, FlowTrainConfig, ["unet_steps=10"])
