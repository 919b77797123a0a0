"""Where this machine keeps what its workers build once and find again: the built-in models made
from code, the compressed variants and their registry. ``ORCHESTRATE_CACHE`` names the folder;
else it is ``orchestrate`` in the XDG cache (``~/.cache``)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    env = os.environ.get("ORCHESTRATE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "orchestrate"
