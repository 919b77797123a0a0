"""Read a CSV manifest of prompts, validate every row, and expand it into job specs.

Validation collects every problem (file, line, column, value) before anything is inserted, so a
bad manifest is rejected whole. ``num_images = k`` expands one row into k jobs with seeds
``seed, seed + 1, ...``, each reproducible on its own.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.errors import ManifestError, ManifestIssue
from orchestrator.models import JOB_FIELDS
from workers.schedulers import SCHEDULER_NAMES

SEED_MAX = 2**32 - 1
INT_LIMITS = {
    "steps": (1, 500),
    "size": (64, 4096),
    "num_images": (1, 10_000),
    "priority": (-1_000_000, 1_000_000),
}
GUIDANCE_LIMITS = (0.0, 50.0)
# fp16 (unquantized), uniform palettized variants, or the name of a mixed-bit recipe variant
QUANTIZATIONS = ("fp16", "8bit", "6bit", "4bit")
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")
MAX_PROMPT_CHARS = 10_000
MAX_JOBS = 1_000_000  # jobs one submit may expand to (a few hundred MB while validated)
MAX_OUTPUT_NAME = 120
OUTPUT_NAME_FIELDS = ("seed", "index", "line", "steps", "scheduler", "width", "height")
EXTRA_PREFIX = "meta_"

# The manifest's columns: a job's own fields, then how a row expands and is filed.
COLUMNS = (*JOB_FIELDS, "num_images", "priority", "tags", "output_name")


@dataclass(frozen=True)
class Defaults:
    """Values for columns a manifest leaves out or leaves empty; recorded on every job."""

    steps: int = 20
    guidance_scale: float = 7.5
    scheduler: str = "dpmpp_2m"
    model: str = "tiny"
    quantization: str = "fp16"
    width: int | None = None  # None: the model's native size
    height: int | None = None
    num_images: int = 1
    priority: int = 0


@dataclass(frozen=True)
class JobSpec:
    """One image to generate: everything that decides its pixels, plus bookkeeping."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    scheduler: str
    model: str
    quantization: str
    priority: int = 0
    tags: str = ""
    output_name: str = ""
    line: int = 0
    image_index: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Content hash of what decides the pixels; equal specs are the same image. (The
        guidance scale as its float repr, so 7 and 7.0 are one job.)"""
        key = [
            repr(float(v)) if name == "guidance_scale" else v
            for name in JOB_FIELDS
            for v in (getattr(self, name),)
        ]
        return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Manifest:
    """A validated, expanded manifest."""

    path: str
    sha256: str
    rows: int
    jobs: list[JobSpec]


def job_limits(job: dict[str, object]) -> list[str]:
    """What in a job from elsewhere (a PNG's metadata) is outside a manifest's limits."""
    problems = []
    for name, (low, high) in (
        ("steps", INT_LIMITS["steps"]),
        ("width", INT_LIMITS["size"]),
        ("height", INT_LIMITS["size"]),
        ("seed", (0, SEED_MAX)),
    ):
        value = job.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{name} must be a whole number from {low} to {high} (got {value!r})")
    g = job.get("guidance_scale")
    if (
        isinstance(g, bool)
        or not isinstance(g, int | float)
        or not (GUIDANCE_LIMITS[0] <= g <= GUIDANCE_LIMITS[1])
    ):
        problems.append(
            f"guidance_scale must be from {GUIDANCE_LIMITS[0]:g} to {GUIDANCE_LIMITS[1]:g} (got {g!r})"
        )
    prompt = job.get("prompt")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        problems.append(f"prompt must be text of at most {MAX_PROMPT_CHARS} characters")
    return problems


def derived_seed(prompt: str, negative_prompt: str) -> int:
    """The seed for a row that gives none: stable, so resubmitting finds the same jobs."""
    digest = hashlib.sha256(f"{prompt}\x00{negative_prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


_OUTPUT_NAME_OK = re.compile(r"^[\w\-. {}]+$")
_TEMPLATE_FIELD = re.compile(r"{([^{}]*)}")


def _check_output_name(value: str) -> str | None:
    if len(value) > MAX_OUTPUT_NAME:
        return f"must be at most {MAX_OUTPUT_NAME} characters"
    if not _OUTPUT_NAME_OK.match(value) or ".." in value or value.startswith("."):
        return (
            "must be a plain file name (letters, digits, space, '_', '-', '.', {fields}); "
            "no '/', '\\', '..' or leading '.'"
        )
    for name in _TEMPLATE_FIELD.findall(value):
        if name not in OUTPUT_NAME_FIELDS:
            return f"unknown field {{{name}}}; known: " + ", ".join(
                "{" + f + "}" for f in OUTPUT_NAME_FIELDS
            )
    if value.count("{") != value.count("}"):
        return "has an unbalanced '{' or '}'"
    return None


class _RowChecker:
    """Parses the cells of one row, recording an issue for each bad one."""

    def __init__(self, path: str, line: int, issues: list[ManifestIssue]) -> None:
        self.path = path
        self.line = line
        self.issues = issues
        self.ok = True

    def fail(self, column: str | None, value: str | None, message: str) -> None:
        self.ok = False
        self.issues.append(ManifestIssue(self.path, self.line, column, value, message))

    def integer(self, column: str, raw: str, low: int, high: int, hint: str = "") -> int | None:
        text = raw.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                as_float = math.nan
            if as_float.is_integer():
                value = int(as_float)
            else:
                self.fail(column, raw, "must be a whole number" + hint)
                return None
        if not low <= value <= high:
            self.fail(column, raw, f"must be between {low} and {high}" + hint)
            return None
        return value

    def number(self, column: str, raw: str, low: float, high: float) -> float | None:
        try:
            value = float(raw.strip())
        except ValueError:
            self.fail(column, raw, "must be a number")
            return None
        if not math.isfinite(value) or not low <= value <= high:
            self.fail(column, raw, f"must be between {low:g} and {high:g}")
            return None
        return value

    def size(self, column: str, raw: str) -> int | None:
        low, high = INT_LIMITS["size"]
        value = self.integer(column, raw, low, high)
        if value is not None and value % 8:
            self.fail(column, raw, "must be a multiple of 8 (Stable Diffusion's VAE scale)")
            return None
        return value

    def choice(self, column: str, raw: str, allowed: Iterable[str]) -> str | None:
        value = raw.strip().lower()
        allowed = tuple(allowed)
        if value in allowed:
            return value
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        self.fail(column, raw, "must be one of " + ", ".join(allowed) + hint)
        return None


def _decode(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(
            [
                ManifestIssue(
                    path,
                    line,
                    None,
                    None,
                    f"is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                    "save the CSV as 'CSV UTF-8'",
                )
            ]
        ) from None


def _header_columns(
    header: list[str], path: str, extra_columns: Iterable[str], issues: list[ManifestIssue]
) -> list[str | None]:
    """Map each header cell to a known column, an extra-metadata column, or an error (None)."""
    declared = {c.strip().lower() for c in extra_columns}
    names: list[str | None] = []
    seen: set[str] = set()
    for cell in header:
        name = cell.strip().lower()
        if name in seen:
            issues.append(ManifestIssue(path, 1, cell, None, "appears twice in the header"))
            names.append(None)
            continue
        seen.add(name)
        if name in COLUMNS or name.startswith(EXTRA_PREFIX) or name in declared:
            names.append(name)
        elif not name:
            issues.append(ManifestIssue(path, 1, cell, None, "header has an empty column name"))
            names.append(None)
        else:
            close = difflib.get_close_matches(name, COLUMNS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            issues.append(
                ManifestIssue(
                    path,
                    1,
                    cell,
                    None,
                    f"is not a known column{hint} (extra metadata columns start with "
                    f"'{EXTRA_PREFIX}' or are declared with --extra-column)",
                )
            )
            names.append(None)
    if "prompt" not in seen:
        issues.append(ManifestIssue(path, 1, None, None, "header has no 'prompt' column"))
    return names


def parse_manifest(
    data: bytes | str,
    path: str = "<manifest>",
    defaults: Defaults | None = None,
    *,
    extra_columns: Iterable[str] = (),
    native_size: Callable[[str], tuple[int, int]] | None = None,
    max_jobs: int = MAX_JOBS,
) -> Manifest:
    """Validate and expand a manifest; raise ManifestError listing every problem. A manifest
    that expands past ``max_jobs`` jobs is refused at the row that crosses the limit, before
    the rest is expanded."""
    defaults = defaults or Defaults()
    content = data.encode("utf-8") if isinstance(data, str) else data
    text = _decode(content, path) if isinstance(data, bytes) else data.lstrip("\ufeff")
    if native_size is None:
        from workers.models import native_size as model_native_size  # light: reads a config

        native_size = model_native_size

    issues: list[ManifestIssue] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ManifestError(
            [ManifestIssue(path, 1, None, None, f"is not valid CSV: {exc}")]
        ) from None
    if header is None or not any(c.strip() for c in header):
        raise ManifestError([ManifestIssue(path, 1, None, None, "is empty; it needs a header row")])
    columns = _header_columns(header, path, extra_columns, issues)
    if issues:
        raise ManifestError(issues)
    width = len(columns)
    index_of = {name: i for i, name in enumerate(columns) if name is not None}
    extra_names = [(i, n) for i, n in enumerate(columns) if n and n not in COLUMNS]
    sizes: dict[str, tuple[int, int]] = {}

    jobs: list[JobSpec] = []
    expanded = 0
    rows = 0
    last_line = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            issues.append(
                ManifestIssue(path, last_line + 1, None, None, f"is not valid CSV: {exc}")
            )
            break
        line = last_line + 1
        last_line = reader.line_num
        if not cells or not any(c.strip() for c in cells):
            continue  # blank line
        rows += 1
        row = _RowChecker(path, line, issues)
        if len(cells) > width and any(c.strip() for c in cells[width:]):
            row.fail(
                None, None, f"has {len(cells)} fields but the header has {width} (unquoted comma?)"
            )
            continue

        def cell(name: str, cells: list[str] = cells) -> str:
            i = index_of.get(name)
            return cells[i] if i is not None and i < len(cells) else ""

        prompt = cell("prompt").strip()
        if not prompt:
            row.fail("prompt", cell("prompt"), "must not be empty")
        elif len(prompt) > MAX_PROMPT_CHARS:
            row.fail("prompt", prompt, f"must be at most {MAX_PROMPT_CHARS} characters")
        negative = cell("negative_prompt").strip()

        raw = cell("seed")
        seed: int | None = (
            derived_seed(prompt, negative)
            if not raw.strip()
            else (
                row.integer(
                    "seed", raw, 0, SEED_MAX, "; leave it empty for a seed derived from the prompt"
                )
            )
        )
        raw = cell("steps")
        steps = row.integer("steps", raw, *INT_LIMITS["steps"]) if raw.strip() else defaults.steps
        raw = cell("guidance_scale")
        guidance = (
            row.number("guidance_scale", raw, *GUIDANCE_LIMITS)
            if raw.strip()
            else defaults.guidance_scale
        )
        raw = cell("scheduler")
        scheduler = (
            row.choice("scheduler", raw, SCHEDULER_NAMES) if raw.strip() else defaults.scheduler
        )
        model = cell("model").strip() or defaults.model
        raw = cell("quantization").strip()
        quantization: str | None = defaults.quantization
        if raw:
            quantization = raw.lower() if raw.lower() in QUANTIZATIONS else raw
            if quantization not in QUANTIZATIONS and not VARIANT_NAME.match(raw):
                row.fail(
                    "quantization",
                    raw,
                    "must be fp16, 8bit, 6bit, 4bit or a recipe name (letters, digits, '_', '-', '.')",
                )
                quantization = None
        raw = cell("num_images")
        count = (
            row.integer("num_images", raw, *INT_LIMITS["num_images"])
            if raw.strip()
            else defaults.num_images
        )
        raw = cell("priority")
        priority = (
            row.integer("priority", raw, *INT_LIMITS["priority"])
            if raw.strip()
            else defaults.priority
        )
        tags = ",".join(t.strip() for t in re.split(r"[;,]", cell("tags")) if t.strip())
        output_name = cell("output_name").strip()
        if output_name:
            problem = _check_output_name(output_name)
            if problem:
                row.fail("output_name", output_name, problem)

        raw_w, raw_h = cell("width"), cell("height")
        w = row.size("width", raw_w) if raw_w.strip() else defaults.width
        h = row.size("height", raw_h) if raw_h.strip() else defaults.height
        if row.ok and (w is None or h is None):
            if model not in sizes:
                sizes[model] = native_size(model)
            w = w or sizes[model][0]
            h = h or sizes[model][1]
        if not row.ok:
            continue
        assert seed is not None and steps is not None and guidance is not None
        assert scheduler and quantization and count is not None and priority is not None
        assert w is not None and h is not None
        if seed + count - 1 > SEED_MAX:
            row.fail(
                "num_images", cell("num_images"), f"seed {seed} + num_images passes {SEED_MAX}"
            )
            continue
        extra = {name: cells[i] for i, name in extra_names if i < len(cells) and cells[i] != ""}
        if expanded + count > max_jobs:
            if expanded <= max_jobs:
                row.fail(
                    "num_images" if count > 1 else None,
                    cell("num_images") if count > 1 else None,
                    f"expands the manifest past {max_jobs:,} jobs (the limit of one submit; "
                    "--max-total-jobs raises it)",
                )
                expanded = max_jobs + 1
            continue
        expanded += count
        for k in range(count):
            jobs.append(
                JobSpec(
                    prompt=prompt,
                    negative_prompt=negative,
                    seed=seed + k,
                    steps=steps,
                    guidance_scale=guidance,
                    width=w,
                    height=h,
                    scheduler=scheduler,
                    model=model,
                    quantization=quantization,
                    priority=priority,
                    tags=tags,
                    output_name=output_name,
                    line=line,
                    image_index=k,
                    extra=extra,
                )
            )

    if issues:
        raise ManifestError(issues)
    if not rows:
        raise ManifestError([ManifestIssue(path, 2, None, None, "has a header but no rows")])
    return Manifest(path=path, sha256=hashlib.sha256(content).hexdigest(), rows=rows, jobs=jobs)


def load_manifest(
    path: str | Path,
    defaults: Defaults | None = None,
    *,
    extra_columns: Iterable[str] = (),
    native_size: Callable[[str], tuple[int, int]] | None = None,
    max_jobs: int = MAX_JOBS,
) -> Manifest:
    """Read and validate a manifest file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ManifestError(
            [ManifestIssue(str(path), 0, None, None, f"cannot be read: {exc.strerror}")]
        ) from None
    return parse_manifest(
        data,
        str(path),
        defaults,
        extra_columns=extra_columns,
        native_size=native_size,
        max_jobs=max_jobs,
    )


def single_job(
    prompt: str, defaults: Defaults, *, seed: int | None = None, negative_prompt: str = ""
) -> bytes:
    """A one-row manifest, so ``generate`` takes the same path as a file."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["prompt", "negative_prompt", "seed"])
    writer.writerow([prompt, negative_prompt, "" if seed is None else seed])
    return buf.getvalue().encode("utf-8")
