"""The training script's pieces: its tokenizer, its data, and that a run is deterministic.

CI does not retrain the shipped model (that takes tens of minutes); a run of a few steps
exercises the same code, and two such runs must write the same bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPTokenizer

from workers.judge import HELD_OUT_PROMPTS
from workers.scenes import parse_prompt
from workers.tiny import write_clip_vocabulary
from workers.training import TrainConfig, draw_scenes, learn_merges, train, vocabulary_words


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

    config = TrainConfig(
        vae_steps=3, vae_batch=4, scenes=64, unet_steps=3, unet_batch=4, warmup=1, threads=1
    )
    losses = []
    for name in ("a", "b"):
        report = train(tmp_path / name, config)
        losses.append(report.unet_losses)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert len(_digests(tmp_path / "a")) == 3  # vae, unet, text encoder
    assert losses[0] == losses[1] and len(losses[0]) == 3
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "a")
    assert pipe.vae_scale_factor == 8
    assert pipe.vae.config.scaling_factor == pytest.approx(report.latent_scaling_factor)
    assert (tmp_path / "a" / "training.json").is_file()
    # another seed is another model
    other = train(tmp_path / "c", TrainConfig(**{**config.__dict__, "seed": config.seed + 1}))
    assert other.unet_losses != losses[0]
    assert _digests(tmp_path / "c") != _digests(tmp_path / "a")
