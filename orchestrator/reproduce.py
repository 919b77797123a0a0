"""Reproduction check: regenerate an image from the metadata in its own PNG and compare pixels.

Needs only the PNG: its JSON chunk holds the job (prompt, seed, steps, ...) and how it ran
(device, torch thread count, library versions), which is what decides the pixels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import UsageError
from contract.job import PIXEL_FIELDS
from contract.limits import UNRECORDED_THREADS
from orchestrator.manifest import job_limits
from orchestrator.output import write_atomic

# What run_job reads from a job; an image missing any of them cannot be regenerated.
NEEDED_FIELDS = (*PIXEL_FIELDS, "model")


@dataclass
class Reproduction:
    """How a regenerated image compares with the original."""

    path: Path
    job: dict[str, Any]
    run: dict[str, Any]  # how the original ran (backend, device, dtype, threads, versions)
    here: dict[str, Any]  # how the regeneration ran
    identical: bool
    same_size: bool
    psnr_db: float | None  # None when identical (infinite) or when the sizes differ
    max_abs_diff: int | None  # None when the sizes differ
    png: bytes  # the regenerated PNG, with its own metadata
    differences: list[str] = field(default_factory=list)  # run settings that differ
    note: str | None = None  # e.g. a cross-backend comparison, said before the figures

    def summary(self) -> str:
        """One line for the user (two with a note)."""
        head = f"{self.note}\n" if self.note else ""
        if self.identical:
            return f"{head}{self.path}: reproduced, pixels identical"
        if not self.same_size:
            return f"{head}{self.path}: differs: the regenerated image has another size"
        return (
            f"{head}{self.path}: differs: PSNR {self.psnr_db:.2f} dB, "
            f"max abs pixel difference {self.max_abs_diff}"
        )


def read_recorded(path: Path) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """The PNG's bytes and the job and run recorded in it; a clear error when it has none."""
    from PIL import UnidentifiedImageError

    from workers.metadata import read_png_metadata

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        meta = read_png_metadata(data)["meta"]
    except UnidentifiedImageError as exc:
        raise UsageError(f"{path}: not an image file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL reports broken chunks as OSError or SyntaxError; bad JSON is a ValueError.
        raise UsageError(f"{path}: damaged PNG or metadata: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("job"), dict):
        raise UsageError(
            f"{path}: no orchestrate metadata in this PNG (only images this tool made can be "
            "reproduced)"
        )
    job, run = meta["job"], meta.get("run") or {}
    missing = [k for k in NEEDED_FIELDS if k not in job]
    if missing:
        raise UsageError(f"{path}: the recorded job lacks {', '.join(missing)}")
    problems = job_limits(job)
    if problems:
        # The same limits as a manifest's: crafted metadata must not run for ever.
        raise UsageError(f"{path}: the recorded job is out of bounds: {'; '.join(problems)}")
    return data, job, run


def compare_pixels(a: bytes, b: bytes) -> tuple[bool, bool, float | None, int | None]:
    """(identical, same size, PSNR in dB, max abs difference) of two images' RGB pixels."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(a)) as ia, Image.open(io.BytesIO(b)) as ib:
        if ia.size != ib.size:
            return False, False, None, None
        pa = np.asarray(ia.convert("RGB"), dtype=np.int16)
        pb = np.asarray(ib.convert("RGB"), dtype=np.int16)
    diff = np.abs(pa - pb)
    max_abs = int(diff.max())
    if max_abs == 0:
        return True, True, None, 0
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return False, True, 10.0 * math.log10(255.0**2 / mse), max_abs


def reproduce_image(
    path: Path, *, device: str | None = None, write_copy: bool = False
) -> Reproduction:
    """Regenerate the image at ``path`` from its own metadata and compare the pixels.

    ``device`` overrides the recorded one (a different device rarely gives equal pixels);
    ``write_copy`` writes the regenerated image as ``<name>.reproduced.png`` beside it.
    """
    from contract.errors import JobInputError, ModelLoadError
    from workers.task import run_job

    path = Path(path)
    original, job, run = read_recorded(path)
    # The recorded count, never today's default: the count changes the pixels.
    threads = int(run.get("torch_threads") or UNRECORDED_THREADS)
    cache, note = _cache_for(run, device, threads)
    try:
        out = run_job(dict(job), cache)
    except (JobInputError, ModelLoadError) as exc:
        raise UsageError(f"{path}: cannot regenerate: {exc}") from exc
    identical, same_size, psnr, max_abs = compare_pixels(original, out.png)
    here = {k: out.result.get(k) for k in ("backend", "device", "dtype", "tuning", "torch_threads")}
    here["versions"] = out.result.get("versions") or {}
    changed = _model_changed(job, run, here)
    if changed:
        note = f"{note}\n{changed}" if note else changed
    result = Reproduction(
        path=path,
        job=job,
        run=run,
        here=here,
        identical=identical,
        same_size=same_size,
        psnr_db=psnr,
        max_abs_diff=max_abs,
        png=out.png,
        differences=_differences(run, here),
        note=note,
    )
    if write_copy:
        try:
            write_atomic(reproduced_path(path), out.png)
        except OSError as exc:
            raise UsageError(
                f"{reproduced_path(path)}: cannot write the regenerated image: {exc.strerror or exc}"
            ) from exc
    return result


def _cache_for(run: dict[str, Any], device: str | None, threads: int) -> tuple[Any, str | None]:
    """The pipeline cache that regenerates an image made as ``run`` says, and a note when the
    regeneration cannot run the way the original did.

    A Core ML image (its "device" is a compute-units name) regenerates with Core ML on macOS;
    elsewhere with the diffusers backend, which is then a comparison across backends (other
    kernels, other precision): close, never identical, and said so."""
    import sys

    from workers.backends.diffusers import pick_device
    from workers.task import PipelineCache
    from workers.tuning import Tuning

    if run.get("backend") == "coreml":
        units = str(run.get("device") or "CPU_AND_NE")
        if sys.platform == "darwin" and device is None:
            return PipelineCache(backend="coreml", compute_units=units, threads=threads), None
        note = (
            f"made with Core ML ({units}); regenerated with the diffusers backend on "
            f"{device or 'this machine'}: a cross-backend comparison, so expect a PSNR, "
            "not identical pixels"
        )
        return PipelineCache(device=device or "auto", threads=threads), note
    where = device or run.get("device") or "auto"
    try:
        # The recorded tuning (it may change the pixels), less what this device cannot do.
        tuning = Tuning.parse(run.get("tuning")).for_device(pick_device(where))
    except Exception:
        tuning = Tuning()  # the device is not here: the load below says so in one line
    return PipelineCache(device=where, threads=threads, tuning=tuning), None


def reproduced_path(path: Path) -> Path:
    """Where ``--compare`` puts the regenerated image: ``<name>.reproduced.png`` beside it."""
    return path.with_name(f"{path.stem}.reproduced.png")


def _model_changed(
    job: dict[str, Any], recorded: dict[str, Any], here: dict[str, Any]
) -> str | None:
    """A sentence when the model's files are not those that made the image (a model retrained
    or replaced under the same name or path): then no setting can give the same pixels."""
    old = (recorded.get("versions") or {}).get("model_fingerprint")
    new = (here.get("versions") or {}).get("model_fingerprint")
    if not old or not new or old == new:
        return None  # images from before fingerprints, or nothing on disk to read: unknown
    return (
        f"the model {job['model']!r} here is not the one that made this image (its files' "
        f"fingerprint was {old}, is {new}): expect other pixels"
    )


def _differences(recorded: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """Run settings that differ between the original and the regeneration: the usual causes
    of different pixels."""
    out = []
    for key in ("backend", "device", "dtype", "tuning", "torch_threads"):
        if key in recorded and recorded[key] != here.get(key):
            out.append(f"{key}: {recorded[key]} -> {here.get(key)}")
    old, new = recorded.get("versions") or {}, here.get("versions") or {}
    for key in sorted(old):
        if old[key] != new.get(key):
            out.append(f"{key}: {old[key]} -> {new.get(key)}")
    return out
