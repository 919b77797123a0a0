"""Model resolution: where a model named in a manifest comes from, without importing torch.

Here: the built-in models, local folders, single-file checkpoints, native sizes and
fingerprints. Beside it: ``families`` (what a model folder holds and which pipeline runs it),
``checkpoints`` (single ``.safetensors`` files), ``schedulers`` (the samplers a job may name)
and ``hub`` (the Hugging Face hub and cache as this machine sees them).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from workers.tiny import TINY_FLOW_MODEL_NAME, TINY_MODEL_NAME
from workers.tiny.flow import FLOW_MODELS
from workers.tiny.xl import TINY_XL_MODEL_NAME

SD_NATIVE = (512, 512)
TINY_NATIVE = (64, 64)

# The models that come with the tool, by name: built-in family of each.
BUILTIN_MODELS = {
    TINY_MODEL_NAME: "tiny",
    TINY_FLOW_MODEL_NAME: "tiny-sd3",
    TINY_XL_MODEL_NAME: "tiny-xl",
    **FLOW_MODELS,
}


def is_tiny(model: str) -> bool:
    """Whether ``model`` is a built-in model trained on the scenes world (``tiny``,
    ``tiny-flow``): its prompts follow that world's grammar and the judge scores its images."""
    return model in (TINY_MODEL_NAME, TINY_FLOW_MODEL_NAME)


def is_builtin(model: str) -> bool:
    """Whether ``model`` names a built-in model (``BUILTIN_MODELS``: ``tiny``, ``tiny-xl`` and
    the flow-matching toys)."""
    return model in BUILTIN_MODELS


def builtin_model(model: str) -> Path | None:
    """The folder of a built-in model (built on first use), or None when ``model`` names none."""
    if model in (TINY_MODEL_NAME, TINY_FLOW_MODEL_NAME):
        from workers.tiny import shipped_model

        return shipped_model(model)
    if model == TINY_XL_MODEL_NAME:
        from workers.tiny.xl import ensure_tiny_xl_model

        return ensure_tiny_xl_model()
    if model in FLOW_MODELS:
        from workers.tiny.flow import ensure_tiny_flow_model

        return ensure_tiny_flow_model(model)
    return None


def expand_path(model: str) -> Path:
    """``model`` as a path on this machine, ``~`` expanded (``~nosuchuser`` stays as written)."""
    try:
        return Path(model).expanduser()
    except RuntimeError:  # no such user's home
        return Path(model)


def looks_like_path(model: str) -> bool:
    """Whether a model value names a local folder rather than a hub id (``owner/name``, at
    most one ``/``): it starts with ``/``, ``.`` or ``~``, has a ``\\`` or a drive letter, or
    has more than one ``/``."""
    return (
        model.startswith(("/", ".", "~", "\\"))
        or "\\" in model
        or (len(model) > 1 and model[1] == ":")
        or model.count("/") > 1
    )


def local_folder(model: str) -> Path | None:
    """The model's folder when ``model`` names one on this machine."""
    p = expand_path(model)
    return p if (p / "model_index.json").is_file() else None


def checkpoint_file(model: str) -> Path | None:
    """The model's single-file checkpoint (``.safetensors``) when ``model`` names one here."""
    p = expand_path(model)
    return p if p.suffix.lower() == ".safetensors" and p.is_file() else None


def _checkpoint_family(path: Path) -> str | None:
    """The family a single-file checkpoint's metadata names (ours mark the tiny family);
    None for one made elsewhere or unreadable (the load says so)."""
    from workers.models.checkpoints import family

    try:
        return family(path)
    except Exception:  # not readable as safetensors
        return None


def _config_reader(model: str) -> Any:
    """A reader of the model's config files on this machine (``families.Reader``): a local
    folder's, or a hub id's in this machine's Hugging Face cache; None when there are none
    here (a path not on this machine, a hub id not downloaded)."""
    from workers.models import families

    folder = local_folder(model)
    if folder is not None:
        return families.folder_reader(folder)
    if looks_like_path(model):
        return None
    read = families.hub_cache_reader(model)
    return read if read("model_index.json") is not None else None


@lru_cache(maxsize=1024)
def native_size(model: str) -> tuple[int, int]:
    """The (width, height) a model was trained at: the size used when a row gives none.

    Read from the model's configs (``workers.models.families``: UNet ``sample_size`` x the VAE's
    scale) for a local folder or a hub id in this machine's Hugging Face cache; a hub id not
    on disk is taken as Stable Diffusion 1.x's 512 px (give width and height in the manifest
    for other models). A model of a family this tool does not run still gets its size here:
    the preflight check refuses it with the reason.
    """
    from workers.models import families
    from workers.models.checkpoints import TINY_FAMILY

    if is_builtin(model):
        return TINY_NATIVE
    checkpoint = checkpoint_file(model)
    if checkpoint is not None:
        return TINY_NATIVE if _checkpoint_family(checkpoint) == TINY_FAMILY else SD_NATIVE
    read = _config_reader(model)
    if read is None:
        return SD_NATIVE
    try:
        return families.detect(read).native_size
    except families.UnsupportedModel:
        return families.native_of(read)


@lru_cache(maxsize=1024)
def family_name(model: str) -> str | None:
    """The family (``families.FAMILIES``) of the model a manifest names, as far as its configs
    on this machine tell without loading it: a built-in model's, a local folder's, a cached hub
    id's; None when nothing here says (a hub id not downloaded, a single file made elsewhere, a
    kind this tool does not run: the preflight check and the load say why)."""
    from workers.models import families
    from workers.models.checkpoints import TINY_FAMILY

    if is_builtin(model):
        return BUILTIN_MODELS[model]
    checkpoint = checkpoint_file(model)
    if checkpoint is not None:
        return TINY_FAMILY if _checkpoint_family(checkpoint) == TINY_FAMILY else None
    read = _config_reader(model)
    if read is None:
        return None
    try:
        return families.detect(read).family.name
    except families.UnsupportedModel:
        return None


# ---------------------------------------------------------------------------------------------
# Fingerprint: which model files made an image

_SAMPLE = 1 << 20  # bytes read at each of a large file's start, middle and end
_NOT_MODEL = {"training.json", "readme.md", "license", "license.md", "license.txt"}
_IMAGES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}


def _model_files(folder: Path) -> list[Path]:
    """The files a model folder is made of (diffusers components, Core ML packages, tokenizer
    files), sorted; hidden files, documentation, images and our ``training.json`` left out."""
    files = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if len(rel.parts) == 1 and (
            path.name.lower() in _NOT_MODEL or path.suffix.lower() in _IMAGES
        ):
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _digest_file(digest: Any, path: Path, name: str) -> None:
    size = path.stat().st_size
    digest.update(f"{name}\0{size}\0".encode())
    with path.open("rb") as f:
        if size <= 3 * _SAMPLE:
            digest.update(f.read())
            return
        for offset in (0, (size - _SAMPLE) // 2, size - _SAMPLE):
            f.seek(offset)
            digest.update(f.read(_SAMPLE))


def hub_snapshot(model: str) -> Path | None:
    """The local snapshot folder of a hub id in this machine's Hugging Face cache, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "model_index.json")
    except Exception:  # not a valid repo id, no cache: no snapshot here
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_fingerprint(source: str) -> str | None:
    """A short fingerprint of the files a model is loaded from (a folder, a single file, or a
    hub id's cached snapshot), recorded with every image so that ``reproduce`` can tell when
    the model under a name is not the one that made it (the built-in ``tiny`` is retrained
    from time to time). Each file counts by its path in the model, its size and its bytes:
    whole up to 3 MB (configs, tokenizers), else 1 MB at its start, middle and end, so it
    costs milliseconds, not a read of gigabytes. Two trainings differ in nearly every byte; a
    deliberate edit of a few weights in the middle of a large file could go unseen. Not
    A1111's "Model hash" (a sha256 of the whole file). None when there is nothing on disk to
    read."""
    import hashlib

    digest = hashlib.sha256()
    try:
        path = expand_path(source)
        if path.is_file():
            files = [(path.name, path)]
        else:
            folder = path if path.is_dir() else hub_snapshot(source)
            if folder is None:
                return None
            files = [(p.relative_to(folder).as_posix(), p) for p in _model_files(folder)]
        for name, p in files:
            _digest_file(digest, p, name)
    except OSError:
        return None  # unreadable now: the load says why, if it matters
    return digest.hexdigest()[:16] if files else None
