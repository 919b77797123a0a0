"""Compressed variants on this machine: which folder holds (model, variant, format).

A manifest's ``quantization`` names a variant (``8bit``, ``6bit``, ``4bit`` or a recipe name);
``orchestrate model compress`` registers what it builds, and workers look variants up here.
The registry is a JSON file in the cache folder, rewritten atomically under a lock.
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

from orchestrator.errors import CompressionError
from workers.tiny import default_cache_dir

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


def register(model: str, variant: str, fmt: str, path: Path, **info: Any) -> dict[str, Any]:
    """Record (or replace) a variant; returns its entry."""
    if fmt not in FORMATS:
        raise CompressionError(f"format must be one of {FORMATS}, not {fmt!r}")
    entry = {
        "model": model,
        "variant": variant,
        "format": fmt,
        "path": str(Path(path).absolute()),
        "created": time.time(),
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


def lookup(model: str, variant: str, fmt: str) -> Path | None:
    for e in entries():
        if (e["model"], e["variant"], e["format"]) == (model, variant, fmt) and Path(
            e["path"]
        ).exists():
            return Path(e["path"])
    return None
