"""A tiny Stable Diffusion built from code, so tests and the demo run with no download.

The components are the real diffusers/transformers classes at toy size, with fixed-seed random
weights (every machine builds byte-identical weights), saved with ``save_pretrained`` and then
loaded with ``from_pretrained`` exactly as a user's real model folder is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_MODEL_NAME = "tiny"
# Bump when the architecture or weights change, so old caches are not reused.
TINY_MODEL_VERSION = "tiny-sd-v1"
TINY_WEIGHT_SEED = 20240531


def byte_unicode_table() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def write_clip_vocabulary(folder: Path) -> int:
    """Write a byte-level CLIP ``vocab.json`` and an empty ``merges.txt``; return the vocab size.

    With no merges every byte is its own token, which is all a random-weight model needs,
    and both files are the ones Apple's Core ML resources and Swift package read.
    """
    chars = list(byte_unicode_table().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return len(vocab)


def default_cache_dir() -> Path:
    env = os.environ.get("ORCHESTRATE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "orchestrate"


def tiny_model_path(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "models" / TINY_MODEL_VERSION


def build_tiny_model(destination: Path) -> None:
    """Build the tiny model's components from code and save them as a diffusers folder."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = destination / "tokenizer"
    vocab_size = write_clip_vocabulary(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    # transformers 5 silently builds a 3-token vocabulary when it misses the files.
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {vocab_size}")

    torch.manual_seed(TINY_WEIGHT_SEED)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    # Four blocks, three downsamplings: an image is 8x its latent, as in Stable Diffusion.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            projection_dim=32,
        )
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(destination, safe_serialization=True)  # type: ignore[attr-defined]
    # save_pretrained writes tokenizer.json only; keep the plain files Core ML tooling reads.
    write_clip_vocabulary(destination / "tokenizer")


def ensure_tiny_model(cache_dir: Path | None = None) -> Path:
    """Return the tiny model's folder, building it once (atomically, safe across processes)."""
    path = tiny_model_path(cache_dir)
    if (path / "model_index.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        logger.info("building the tiny model in %s", path, extra={"action": "tiny_model_build"})
        build_tiny_model(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            # Another process finished first; its copy is identical.
            if not (path / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
