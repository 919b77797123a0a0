"""Compressed variants on this machine: which folder holds (model, variant, format).

A manifest's ``quantization`` names a variant (``8bit``, ``6bit``, ``4bit`` or a recipe name);
``orchestrate model compress`` registers what it builds, and workers look variants up here.
The registry is a JSON file in the cache folder, rewritten atomically under a lock. Each entry
records the fingerprint of the model files it was made from, and a variant of a model whose
files have changed since (the built-in ``tiny`` retrained, a folder replaced) is not found:
uniform variants are then rebuilt, and a recipe variant must be made again.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contract.errors import CompressionError
from workers.cache import default_cache_dir

FORMATS = ("torch", "coreml")


def registry_path() -> Path:
    return default_cache_dir() / "registry.json"


def variants_dir() -> Path:
    return default_cache_dir() / "variants"


@contextmanager
def _locked() -> Iterator[Path]:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("variants", []))


def entries() -> list[dict[str, Any]]:
    return _read(registry_path())


def source_fingerprint(model: str) -> str | None:
    """The fingerprint of the files ``model`` loads from now (None when there are none here)."""
    from contract.errors import OrchestratorError
    from workers.backends.diffusers import model_source
    from workers.models import model_fingerprint

    try:
        return model_fingerprint(model_source(model))
    except (OrchestratorError, OSError):
        return None


def register(model: str, variant: str, fmt: str, path: Path, **info: Any) -> dict[str, Any]:
    """Record (or replace) a variant, with the fingerprint of the model it was made from;
    returns its entry."""
    if fmt not in FORMATS:
        raise CompressionError(f"format must be one of {FORMATS}, not {fmt!r}")
    entry = {
        "model": model,
        "variant": variant,
        "format": fmt,
        "path": str(Path(path).absolute()),
        "created": time.time(),
        "source_fingerprint": source_fingerprint(model),
        **info,
    }
    with _locked() as reg:
        rows = [
            e
            for e in _read(reg)
            if (e["model"], e["variant"], e["format"]) != (model, variant, fmt)
        ]
        rows.append(entry)
        fd, tmp = tempfile.mkstemp(dir=reg.parent, prefix=".registry.")
        with os.fdopen(fd, "w") as fh:
            json.dump({"variants": rows}, fh, indent=2, sort_keys=True)
        os.replace(tmp, reg)
    return entry


def _entry(model: str, variant: str, fmt: str) -> dict[str, Any] | None:
    for e in entries():
        if (e["model"], e["variant"], e["format"]) == (model, variant, fmt) and Path(
            e["path"]
        ).exists():
            return e
    return None


def _stale(entry: dict[str, Any], model: str) -> bool:
    made_from = entry.get("source_fingerprint")
    if made_from is None:  # registered before fingerprints, or from files not here
        return False
    now = source_fingerprint(model)
    return now is not None and now != made_from


def lookup(model: str, variant: str, fmt: str) -> Path | None:
    """The folder of (model, variant, format), if one is registered and was made from the
    model's files as they are now."""
    e = _entry(model, variant, fmt)
    return None if e is None or _stale(e, model) else Path(e["path"])


def stale_note(model: str, variant: str, fmt: str) -> str:
    """Why ``lookup`` found nothing when a variant is registered, for an error message."""
    e = _entry(model, variant, fmt)
    if e is None or not _stale(e, model):
        return ""
    return (
        f" (the one registered, {e['path']}, was made from other weights than model "
        f"{model!r} has now: it was retrained or replaced since)"
    )
