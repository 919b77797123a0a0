"""One image, no queue: ``orchestrate generate "a prompt" -o PATH``.

The job is validated as a one-row manifest and run by the same task a worker runs
(``workers.task.run_job``), so the PNG carries the same A1111 ``parameters`` text and JSON and
``orchestrate reproduce`` works on it; but nothing is put in a database. The image is written
to a temporary file beside its destination and moved into place (or linked, so that an existing
file is never replaced unless asked): it is there whole or not at all.

Where it goes (``-o``): a path ending ``.png`` is the file itself; anything else is a folder
(made if missing) that gets ``<seed>-<prompt-slug>.png``, with ``-2``, ``-3``, ... added rather
than replacing an image already there. ``--overwrite`` replaces instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import DiskFull, ManifestError, UsageError, is_no_space
from contract.job import JOB_FIELDS
from orchestrator.manifest import Defaults, JobSpec, parse_manifest, single_job
from orchestrator.output import fsync_dir, write_temp

# Suffixes of other image formats: ``-o out.jpg`` is a mistake, not a folder to create.
OTHER_IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif"}
)
MAX_SLUG = 60


@dataclass(frozen=True)
class Target:
    """Where the image goes: one exact file, or a folder that gets a name of our choosing."""

    path: Path  # the file, or the folder
    is_file: bool
    overwrite: bool


def one_job(
    prompt: str, defaults: Defaults, *, seed: int | None = None, negative_prompt: str = ""
) -> dict[str, Any]:
    """The job for one image, checked as a manifest row is (a bad value is one clear line)."""
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    for name in ("width", "height"):
        value = getattr(defaults, name)
        if value is not None and value % 8:
            raise UsageError(f"--{name} must be a multiple of 8 (got {value})")
    try:
        manifest = parse_manifest(
            single_job(prompt, defaults, seed=seed, negative_prompt=negative_prompt),
            "generate",
            defaults,
            expand_prompts=False,  # one image: braces and __words__ mean what they say
        )
    except ManifestError as exc:
        raise UsageError("; ".join(_one_issue(i) for i in exc.issues)) from exc
    spec: JobSpec = manifest.jobs[0]
    return {name: getattr(spec, name) for name in JOB_FIELDS}


def _one_issue(issue: Any) -> str:
    name = "the prompt" if issue.column == "prompt" else f"--{str(issue.column).replace('_', '-')}"
    text = f"{name}: {issue.message}" if issue.column else str(issue.message)
    if issue.value is not None and issue.column != "prompt":
        text += f" (got {issue.value!r})"
    return text


def resolve_target(output_path: str | None, overwrite: bool) -> Target:
    """What ``-o`` means, decided before any work: a ``.png`` file or a folder."""
    raw = output_path if output_path not in (None, "") else "."
    path = Path(str(raw)).expanduser().absolute()
    suffix = path.suffix.lower()
    if path.is_dir():
        return Target(path, is_file=False, overwrite=overwrite)
    if suffix == ".png":
        if path.exists() and not overwrite:
            raise UsageError(f"{path} already exists; --overwrite replaces it")
        if path.parent.exists() and not path.parent.is_dir():
            raise UsageError(f"{path.parent} is a file, not a folder")
        return Target(path, is_file=True, overwrite=overwrite)
    if suffix in OTHER_IMAGE_SUFFIXES:
        raise UsageError(f"-o {raw}: generate writes PNG only; name a .png file or a folder")
    if path.exists():
        raise UsageError(f"-o {raw}: {path} is a file; name a .png file or a folder")
    return Target(path, is_file=False, overwrite=overwrite)


def slug(prompt: str, limit: int = MAX_SLUG) -> str:
    """A file-name-safe short form of a prompt: ASCII letters and digits joined by ``-``."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    out = ""
    for word in words:
        candidate = f"{out}-{word}" if out else word
        if len(candidate) > limit:
            break
        out = candidate
    return out or (words[0][:limit] if words else "image")


def file_names(job: dict[str, Any]) -> Callable[[int], str]:
    """The n-th name to try in a folder: ``<seed>-<slug>.png``, then ``-2``, ``-3``, ..."""
    base = f"{job['seed']}-{slug(job['prompt'])}"
    return lambda n: f"{base}.png" if n == 1 else f"{base}-{n}.png"


def write_image(target: Target, job: dict[str, Any], data: bytes) -> Path:
    """Write ``data`` where ``target`` says, atomically; return the exact path written."""
    folder = target.path.parent if target.is_file else target.path
    try:
        tmp = write_temp(folder, data, ".generate.")
    except OSError as exc:
        raise _write_error(folder, exc) from exc
    try:
        try:
            if target.is_file:
                final = target.path
                _place(tmp, final, target.overwrite)
            else:
                names = file_names(job)
                n = 1
                while True:
                    final = folder / names(n)
                    try:
                        _place(tmp, final, target.overwrite)
                        break
                    except FileExistsError:
                        n += 1
        except FileExistsError as exc:
            raise UsageError(f"{target.path} already exists; --overwrite replaces it") from exc
        except OSError as exc:
            raise _write_error(folder, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):
        fsync_dir(folder)
    return final


def _place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move the finished temporary file to ``final``; without ``overwrite``, never replace a
    file there (a hard link fails if one exists; the temporary file is removed by the caller)."""
    if overwrite:
        if final.is_dir():
            raise UsageError(f"{final} is a folder")
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (
            errno.EPERM,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.EXDEV,
            errno.EMLINK,
        ):
            raise
        # A file system without hard links: check, then rename (a narrow race, but no link).
        if final.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(final)) from exc
        os.replace(tmp, final)


def _write_error(folder: Path, exc: OSError) -> Exception:
    if is_no_space(exc):
        return DiskFull(f"no space left to write the image in {folder}")
    return UsageError(f"cannot write the image in {folder}: {exc.strerror or exc}")
