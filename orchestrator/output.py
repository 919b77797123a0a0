"""Where a job's image goes, and writing it so that it appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import re
import string
import tempfile
from pathlib import Path
from typing import Any

# What a manifest's output_name / output_dir may say, checked at submit.
MAX_OUTPUT_NAME = 120
MAX_OUTPUT_DIR = 200
# A template's fields, and the job column each one reads.
TEMPLATE_COLUMNS = {
    "seed": "seed",
    "index": "image_index",
    "line": "line",
    "steps": "steps",
    "scheduler": "scheduler",
    "width": "width",
    "height": "height",
    "guidance_scale": "guidance_scale",
    "quantization": "quantization",
}
OUTPUT_NAME_FIELDS = tuple(TEMPLATE_COLUMNS)
# The job fields an image's path is made of (``image_path``).
PATH_FIELDS = ("batch_id", "output_name", "output_dir", *TEMPLATE_COLUMNS.values())

_OUTPUT_NAME_OK = re.compile(r"[\w\-. {}]+")
MAX_NAME_BYTES = 150  # a rendered file or folder name, in UTF-8 (filesystems allow 255)


def check_output_name(value: str) -> str | None:
    """A manifest's ``output_name``: a plain file-name template (None when it is fine)."""
    if len(value) > MAX_OUTPUT_NAME:
        return f"must be at most {MAX_OUTPUT_NAME} characters"
    if not _OUTPUT_NAME_OK.fullmatch(value) or ".." in value or value.startswith("."):
        return (
            "must be a plain file name (letters, digits, space, '_', '-', '.', {fields}); "
            "no '/', '\\', '..' or leading '.'"
        )
    return check_template(value)


_OUTPUT_DIR_PART = re.compile(r"[\w\-. {}]+")


def check_output_dir(value: str) -> str | None:
    """A folder under the output directory: relative parts of safe characters, never '..'."""
    if len(value) > MAX_OUTPUT_DIR:
        return f"must be at most {MAX_OUTPUT_DIR} characters"
    parts = value.split("/")
    if value.startswith(("/", "~")) or "\\" in value or ":" in value:
        return "must be a folder relative to the output directory (no leading '/' or '~')"
    for part in parts:
        if (
            not part
            or part in (".", "..")
            or part.startswith(".")
            or not _OUTPUT_DIR_PART.fullmatch(part)
        ):
            return (
                "must be folder names (letters, digits, space, '_', '-', '.', {fields}) joined "
                "by '/'; no '..', no empty or hidden parts"
            )
    return check_template(value)


def check_template(value: str) -> str | None:
    """Fields are plain names of OUTPUT_NAME_FIELDS: no conversion, format spec, index or
    attribute, no stray brace; and every part, rendered with the widest values, fits a
    filesystem's name limit."""
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        return f"is not a valid template ({exc}); fields look like {{seed}}"
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in OUTPUT_NAME_FIELDS or spec or conversion:
            return f"unknown field {{{name}}}; known: " + ", ".join(
                "{" + f + "}" for f in OUTPUT_NAME_FIELDS
            )
    widest = dict.fromkeys(OUTPUT_NAME_FIELDS, "x" * 20)
    for part in value.split("/"):
        if len(part.format(**widest).encode()) > MAX_NAME_BYTES:
            return f"makes a name longer than {MAX_NAME_BYTES} bytes"
    return None


_UNSAFE = re.compile(r"[^\w\-. ]+")
_UMASK = os.umask(0)
os.umask(_UMASK)


def _render(template: str, job: dict[str, Any]) -> str:
    fields = {field: job.get(column) for field, column in TEMPLATE_COLUMNS.items()}
    fields["guidance_scale"] = f"{float(job.get('guidance_scale') or 0):g}"
    fields["quantization"] = job.get("quantization") or ""
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
