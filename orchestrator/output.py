"""Where a job's image goes, and writing it so that it appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^\w\-. ]+")
_UMASK = os.umask(0)
os.umask(_UMASK)


def _render(template: str, job: dict[str, Any]) -> str:
    fields = {
        "seed": job["seed"],
        "index": job["image_index"],
        "line": job["line"],
        "steps": job["steps"],
        "scheduler": job["scheduler"],
        "width": job["width"],
        "height": job["height"],
        "guidance_scale": f"{float(job.get('guidance_scale') or 0):g}",
        "quantization": job.get("quantization", ""),
    }
    try:
        return template.format(**fields)
    except (ValueError, KeyError, IndexError, AttributeError):
        # validated at submit; a hand-edited database gets the template as plain text
        return template


def _safe_part(text: str) -> str:
    """One file or folder name: safe characters, no leading or trailing dots, and at most
    150 bytes of UTF-8 (filesystems allow 255; the job id and ``.png`` come on top)."""
    part = _UNSAFE.sub("_", text).strip(". ")
    while len(part.encode()) > 150:
        part = part[:-1]
    return part.rstrip(". ")


def image_path(root: Path, job: dict[str, Any]) -> Path:
    """``<root>/<batch>/<job-id>.png``, or ``<job-id>-<name>.png`` with an ``output_name``
    template, in ``<root>/<output_dir>/`` where the row names a folder; the job id keeps names
    unique and user text never leaves the output directory."""
    name = f"{int(job['id']):06d}"
    template = job.get("output_name") or ""
    if template:
        # Validated at submit; sanitised again so a hand-edited database cannot escape either.
        rendered = _safe_part(_render(template, job))
        if rendered:
            name += "-" + rendered
    folder = root / str(int(job["batch_id"]))
    parts = [
        part
        for raw in _render(job.get("output_dir") or "", job).split("/")
        if (part := _safe_part(raw))
    ]
    if parts:
        folder = root.joinpath(*parts)
    return folder / f"{name}.png"


def write_temp(folder: Path, data: bytes, prefix: str) -> Path:
    """``data`` in a new temporary file in ``folder`` (made if missing), fsynced, as readable
    as any file its user writes; the caller renames it into place or removes it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            # mkstemp makes 0600 files; an image is as readable as any file its user writes
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename over ``path``, fsync the folder."""
    tmp = write_temp(path.parent, data, f".{path.name}.")
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
