"""The built-in models' world: the tiny Stable Diffusion (here) and the tiny SDXL (``xl``), the
synthetic scenes they draw (``scenes``), how the tiny model is trained on them (``training``),
the judge that reads a scene back from an image (``judge``) and the evaluation that scores a
model with it (``evaluation``).

The built-in tiny Stable Diffusion is there so tests and the demo run with no download. The
components are the real diffusers/transformers classes at toy size (``AutoencoderKL``,
``UNet2DConditionModel``, ``CLIPTextModel`` with a CLIP BPE tokenizer), trained from code on the
synthetic scenes by ``scripts/train_tiny.py``. Its weights ship in the package
(``workers/tiny/model``, a diffusers folder written with ``save_pretrained``) and load with
``from_pretrained`` exactly as a user's real model folder does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TINY_MODEL_NAME = "tiny"
# The trained weights that ship with the package (scripts/train_tiny.py writes them).
SHIPPED_TINY = Path(__file__).resolve().parent / "model"
# The trained flow-matching model (SD3's layout; ``scripts/train_tiny.py --recipe flow``).
TINY_FLOW_MODEL_NAME = "tiny-flow"
SHIPPED_TINY_FLOW = Path(__file__).resolve().parent / "flow_model"


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


def write_clip_vocabulary(folder: Path, merges: Sequence[tuple[str, str]] = ()) -> int:
    """Write a byte-level CLIP ``vocab.json`` and ``merges.txt``; return the vocab size.

    With no merges every byte is its own token, which is all a random-weight model needs; a
    trained model passes the merges it learned, each adding its joined token (as CLIP's own
    vocabulary is built). Both files are the ones Apple's Core ML resources and Swift package
    read.
    """
    chars = list(byte_unicode_table().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(vocab)


def clip_text_config(vocab_size: int, width: int = 32) -> Any:
    """The built-in random-weight models' CLIP text encoder at toy size (two layers, ``width``
    wide and projected to ``width``), for a byte-level vocabulary of ``vocab_size`` tokens
    whose last two are the start and end marks (``write_clip_vocabulary``)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=width,
    )


def build_once(path: Path, build: Callable[[Path], None], what: str) -> Path:
    """The built-in model folder at ``path``, made by ``build(folder)`` once: into a temporary
    folder beside it, renamed into place whole (a process that finds another's copy there
    first keeps it: the build is deterministic, so the two are the same)."""
    import os
    import shutil
    import tempfile

    if (path / "model_index.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        logger.info("building %s in %s", what, path, extra={"action": "tiny_model_build"})
        build(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "model_index.json").is_file():  # not another process's copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def shipped_model(name: str) -> Path:
    """The folder of a built-in model whose trained weights ship in the package (``tiny``,
    ``tiny-flow``)."""
    folder = {TINY_MODEL_NAME: SHIPPED_TINY, TINY_FLOW_MODEL_NAME: SHIPPED_TINY_FLOW}[name]
    if not (folder / "model_index.json").is_file():
        from contract.errors import ModelLoadError

        recipe = " --recipe flow" if name == TINY_FLOW_MODEL_NAME else ""
        raise ModelLoadError(
            f"the built-in {name} model's weights are missing from {folder}; "
            f"rebuild them with `.venv/bin/python scripts/train_tiny.py{recipe}`"
        )
    return folder


def ensure_tiny_model(cache_dir: Path | None = None) -> Path:
    """The built-in tiny model's folder: the trained weights shipped in the package.

    ``cache_dir`` is accepted for callers that pass one and not used: nothing is built.
    """
    del cache_dir
    return shipped_model(TINY_MODEL_NAME)
