"""Read a CSV manifest of prompts, validate every row, and expand it into job specs.

Validation collects every problem (file, line, column, value) before anything is inserted, so a
bad manifest is rejected whole. ``num_images = k`` expands one row into k jobs with seeds
``seed, seed + 1, ...``, each reproducible on its own.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import io
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import ManifestError, ManifestIssue
from contract.job import GATE_FIELDS, JOB_FIELDS
from contract.limits import (
    DEFAULT_QUALITY_TRIES,
    GUIDANCE,
    MAX_EXTRA,
    MAX_PROMPT_CHARS,
    NUM_IMAGES,
    PRIORITY,
    QUALITY_TRIES,
    QUANTIZATIONS,
    SCORE,
    SEED,
    SIZE,
    STEPS,
)
from orchestrator.expansion import (
    COUNT_CAP,
    VARIANT_PREFIX,
    ExpansionError,
    Template,
    Wildcards,
    int_range,
    parse_text,
    split_list,
)
from orchestrator.output import check_output_dir, check_output_name
from orchestrator.presets import MIXED, PRESET_NAMES, PRESETS, nearest_mixed
from workers.models.schedulers import (
    SCHEDULER_NAMES,
    model_kind,
    sampler_problem,
    size_problem,
    steps_problem,
)

# A mixed-bit recipe variant's name (a quantization beside contract.limits.QUANTIZATIONS).
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")
MAX_PROMPT_TEXT = 2_000_000_000  # characters of prompt text one submit may expand to
MAX_JOBS = 1_000_000  # jobs one submit may expand to (a few hundred MB while validated)
EXTRA_PREFIX = "meta_"

# The manifest's columns: a job's own fields and its quality gate, then how a row expands and
# is filed.
COLUMNS = (
    *JOB_FIELDS,
    *GATE_FIELDS,
    "preset",
    "num_images",
    "priority",
    "tags",
    "output_dir",
    "output_name",
)
# Columns whose cell may list values (``a|b``) that expand as a grid; seed and steps take ranges.
GRID_COLUMNS = (
    "preset",
    "model",
    "quantization",
    "scheduler",
    "steps",
    "guidance_scale",
    "width",
    "height",
    "seed",
)
RANGE_COLUMNS = ("seed", "steps")
# Other names a header may give a column: the built-in judge measures prompt adherence.
COLUMN_ALIASES = {"min_adherence": "min_score"}
_GRID_VARIANTS = tuple(VARIANT_PREFIX + c for c in GRID_COLUMNS)  # taken before wildcards


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
    preset: str | None = None  # recorded; its values are already in the fields above
    min_score: float | None = None  # a quality gate for every row that names none
    quality_tries: int = DEFAULT_QUALITY_TRIES  # seeds one attempt of a gated job may try

    def with_preset(self, name: str, keep: Iterable[str] = ()) -> Defaults:
        """These defaults under preset ``name``, except the fields in ``keep`` (given
        explicitly, so they win over the preset)."""
        values = {k: v for k, v in PRESETS[name].values().items() if k not in set(keep)}
        return dataclasses.replace(self, preset=name, **values)  # type: ignore[arg-type]


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
    min_score: float | None = None  # the quality gate (None: none; then quality_tries is None)
    quality_tries: int | None = None
    priority: int = 0
    tags: str = ""
    output_name: str = ""
    output_dir: str = ""
    line: int = 0
    image_index: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Content hash of what decides the pixels; equal specs are the same image. (The
        guidance scale as its float repr, so 7 and 7.0 are one job.) A quality gate decides
        which seed's image is kept, so it is part of the hash, but only when there is one:
        an ungated job keeps the fingerprint it always had."""
        names = JOB_FIELDS if self.min_score is None else (*JOB_FIELDS, *GATE_FIELDS)
        key = [
            repr(float(v)) if name in ("guidance_scale", "min_score") else v
            for name in names
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
        ("steps", STEPS),
        ("width", SIZE),
        ("height", SIZE),
        ("seed", SEED),
    ):
        value = job.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{name} must be a whole number from {low} to {high} (got {value!r})")
    g = job.get("guidance_scale")
    if (
        isinstance(g, bool)
        or not isinstance(g, int | float)
        or not (GUIDANCE.min <= g <= GUIDANCE.max)
    ):
        problems.append(
            f"guidance_scale must be from {GUIDANCE.min:g} to {GUIDANCE.max:g} (got {g!r})"
        )
    prompt = job.get("prompt")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        problems.append(f"prompt must be text of at most {MAX_PROMPT_CHARS} characters")
    return problems


def derived_seed(prompt: str, negative_prompt: str) -> int:
    """The seed for a row that gives none: stable, so resubmitting finds the same jobs."""
    digest = hashlib.sha256(f"{prompt}\x00{negative_prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class _RowFailed(Exception):
    def __init__(self, column: str | None, value: str | None, message: str) -> None:
        super().__init__(message)
        self.column, self.value, self.message = column, value, message


class _Resolver:
    """A row's concrete job fields from its cells, its preset and the defaults; per-model
    lookups (native size, the mixed-bit variant) are made once per manifest."""

    def __init__(
        self,
        native_size: Callable[[str], tuple[int, int]],
        mixed: Callable[[str], str],
    ) -> None:
        self.native_size = native_size
        self.mixed = mixed
        self._sizes: dict[str, tuple[int, int]] = {}
        self._mixed: dict[str, str | ExpansionError] = {}

    def resolve(self, values: dict[str, object], defaults: Defaults) -> dict[str, Any]:
        base: dict[str, Any] = {
            "model": defaults.model,
            "quantization": defaults.quantization,
            "scheduler": defaults.scheduler,
            "steps": defaults.steps,
            "guidance_scale": defaults.guidance_scale,
            "width": defaults.width,
            "height": defaults.height,
            "seed": None,
        }
        preset = values["preset"]
        kind = model_kind(str(values["model"] or base["model"]))
        if preset is not None:
            base.update(PRESETS[str(preset)].values(kind))
        elif defaults.preset and base["scheduler"] == PRESETS[defaults.preset].scheduler:
            base["scheduler"] = PRESETS[defaults.preset].scheduler_for(kind)  # --preset's
        spec = {k: (values[k] if values[k] is not None else v) for k, v in base.items()}
        spec["preset"] = preset or defaults.preset
        model = str(spec["model"])
        if spec["quantization"] == MIXED:
            if model not in self._mixed:
                try:
                    self._mixed[model] = self.mixed(model)
                except ValueError as exc:
                    self._mixed[model] = ExpansionError(str(exc))
            found = self._mixed[model]
            if isinstance(found, ExpansionError):
                column = "quantization" if values["quantization"] else "preset"
                raise _RowFailed(column, str(values[column] or preset or ""), str(found))
            spec["quantization"] = found
        if spec["width"] is None or spec["height"] is None:
            if model not in self._sizes:
                self._sizes[model] = self.native_size(model)
            spec["width"] = spec["width"] or self._sizes[model][0]
            spec["height"] = spec["height"] or self._sizes[model][1]
        return spec


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
        low, high = SIZE
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

    def quantization(self, column: str, raw: str) -> str | None:
        value = raw.strip()
        if value.lower() in (*QUANTIZATIONS, MIXED):
            return value.lower()
        if VARIANT_NAME.match(value):
            return value
        self.fail(
            column,
            raw,
            f"must be {', '.join((*QUANTIZATIONS, MIXED))} or a recipe name "
            "(letters, digits, '_', '-', '.')",
        )
        return None

    def value(self, column: str, raw: str) -> object | None:
        """One value of a grid column, or None (and an issue) when it is bad."""
        if column == "seed":
            hint = "; leave it empty for a seed derived from the prompt"
            return self.integer(column, raw, *SEED, hint)
        if column == "steps":
            return self.integer(column, raw, *STEPS)
        if column == "guidance_scale":
            return self.number(column, raw, *GUIDANCE)
        if column in ("width", "height"):
            return self.size(column, raw)
        if column == "scheduler":
            return self.choice(column, raw, SCHEDULER_NAMES)
        if column == "preset":
            return self.choice(column, raw, PRESET_NAMES)
        if column == "quantization":
            return self.quantization(column, raw)
        return raw.strip()  # model

    def axis(self, column: str, raw: str, defaults: Defaults) -> Sequence[object]:
        """A grid column's values: ``[None]`` for an empty cell (the default), a list for
        ``a|b``, a range for ``lo-hi`` in seed or steps."""
        text = raw.strip()
        if not text:
            return [None]
        bounds = int_range(text) if column in RANGE_COLUMNS else None
        if bounds is not None:
            lo, hi = bounds
            if lo > hi:
                self.fail(column, raw, f"is a range that runs backwards ({lo} > {hi})")
                return [None]
            if self.value(column, str(lo)) is None or self.value(column, str(hi)) is None:
                return [None]
            return range(lo, hi + 1)
        values = []
        for item in split_list(text):
            if not item.strip():
                self.fail(column, raw, "has an empty value in its list (values go 'a|b|c')")
                return [None]
            value = self.value(column, item)
            if value is None:
                return [None]
            if value in values:
                self.fail(column, raw, f"lists {item.strip()!r} twice")
                return [None]
            values.append(value)
        return values

    def template(self, column: str, text: str, wildcards: Wildcards) -> Template | None:
        try:
            return parse_text(text, column, wildcards, _GRID_VARIANTS)
        except ExpansionError as exc:
            self.fail(column, text, str(exc))
            return None


def _quality_gate(
    row: _RowChecker, cell: Callable[[str], str], defaults: Defaults, score_column: str
) -> tuple[float | None, int | None]:
    """A row's quality gate: (min score, seeds per attempt), or (None, None) for none. A
    row's cell wins over the defaults; tries without a gate are a mistake worth naming."""
    raw = cell("min_score")
    min_score = row.number(score_column, raw, *SCORE) if raw.strip() else defaults.min_score
    raw_tries = cell("quality_tries")
    tries = (
        row.integer("quality_tries", raw_tries, *QUALITY_TRIES)
        if raw_tries.strip()
        else defaults.quality_tries
    )
    if min_score is None:
        if raw_tries.strip() and not raw.strip():
            row.fail(
                "quality_tries",
                raw_tries,
                f"needs a quality gate: give the row a {score_column} (or --min-score)",
            )
        return None, None
    return min_score, tries


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
    written: set[str] = set()  # the names as the header spells them (an alias, say)
    for cell in header:
        name = cell.strip().lower()
        canonical = COLUMN_ALIASES.get(name, name)
        if canonical in seen:
            twice = (
                "appears twice in the header"
                if name in written
                else f"names '{canonical}' a second time ("
                + " or ".join(a for a, c in COLUMN_ALIASES.items() if c == canonical)
                + " is another name for it)"
            )
            issues.append(ManifestIssue(path, 1, cell, None, twice))
            names.append(None)
            continue
        written.add(name)
        if canonical != name:
            seen.add(canonical)
            names.append(canonical)
            continue
        seen.add(name)
        if name.startswith(VARIANT_PREFIX):
            issues.append(
                ManifestIssue(
                    path, 1, cell, None, f"'{VARIANT_PREFIX}*' names are kept for grid variants"
                )
            )
            names.append(None)
        elif name in COLUMNS or name.startswith(EXTRA_PREFIX) or name in declared:
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


def _sampling_problem(spec: dict[str, Any]) -> tuple[tuple[str, ...], str] | None:
    """Why the model a job names cannot sample it as asked (the scheduler's kind, the image
    size, too few steps), with the columns that may have asked for it; None when it can."""
    model, scheduler = str(spec["model"]), str(spec["scheduler"])
    problem = sampler_problem(model, scheduler)
    if problem:
        return ("scheduler", "model"), problem
    problem = size_problem(model, int(spec["width"]), int(spec["height"]))
    if problem:
        return ("width", "height", "model"), problem
    problem = steps_problem(model, scheduler, int(spec["steps"]))
    if problem:
        return ("scheduler", "steps"), problem
    return None


def parse_manifest(
    data: bytes | str,
    path: str = "<manifest>",
    defaults: Defaults | None = None,
    *,
    extra_columns: Iterable[str] = (),
    native_size: Callable[[str], tuple[int, int]] | None = None,
    max_jobs: int = MAX_JOBS,
    wildcard_dir: Path | None = None,
    mixed_variant: Callable[[str], str] = nearest_mixed,
    expand_prompts: bool = True,
) -> Manifest:
    """Validate and expand a manifest; raise ManifestError listing every problem. A manifest
    that expands past ``max_jobs`` jobs is refused at the row that crosses the limit, before
    the rest is expanded (a row's size is counted, not built). Wildcard files are read from
    ``wildcard_dir`` (the manifest's folder); ``expand_prompts=False`` takes prompts as
    written (one image: ``generate``)."""
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
    # A column named by an alias is named so in errors too.
    named_as = {
        COLUMN_ALIASES[h]: h for h in (c.strip().lower() for c in header) if h in COLUMN_ALIASES
    }
    index_of.update({alias: index_of[name] for name, alias in named_as.items()})
    extra_names = [(i, n) for i, n in enumerate(columns) if n and n not in COLUMNS]
    resolver = _Resolver(native_size, mixed_variant)
    text_chars = 0
    wildcards = Wildcards(wildcard_dir)

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
        if len(negative) > MAX_PROMPT_CHARS:
            row.fail("negative_prompt", negative, f"must be at most {MAX_PROMPT_CHARS} characters")

        if expand_prompts:
            prompt_t = row.template("prompt", prompt, wildcards)
            negative_t = row.template("negative_prompt", negative, wildcards)
        else:
            prompt_t, negative_t = Template((prompt,)), Template((negative,) if negative else ())
        axes = {name: row.axis(name, cell(name), defaults) for name in GRID_COLUMNS}
        raw = cell("num_images")
        count = row.integer("num_images", raw, *NUM_IMAGES) if raw.strip() else defaults.num_images
        raw = cell("priority")
        priority = row.integer("priority", raw, *PRIORITY) if raw.strip() else defaults.priority
        min_score, tries = _quality_gate(
            row, cell, defaults, named_as.get("min_score", "min_score")
        )
        tags = ",".join(t.strip() for t in re.split(r"[;,]", cell("tags")) if t.strip())
        output_name = cell("output_name").strip()
        if output_name:
            problem = check_output_name(output_name)
            if problem:
                row.fail("output_name", output_name, problem)
        output_dir = cell("output_dir").strip().rstrip("/")
        if output_dir:
            problem = check_output_dir(output_dir)
            if problem:
                row.fail("output_dir", output_dir, problem)
        if not row.ok:
            continue
        assert prompt_t is not None and negative_t is not None
        assert count is not None and priority is not None
        factors = [
            *prompt_t.factors,
            *negative_t.factors,
            *(len(v) for v in axes.values()),
            count,
        ]
        size = math.prod(factors)
        text_chars += size * (prompt_t.longest + negative_t.longest)
        if expanded + size > max_jobs or text_chars > MAX_PROMPT_TEXT:
            if expanded <= max_jobs:
                shown = [str(n) if n < COUNT_CAP else "over 10^30" for n in factors if n > 1]
                shape = " x ".join(shown[:12]) + (" x ..." if len(shown) > 12 else "")
                total = f"{size:,}" if size.bit_length() <= 100 else "more than 10^30"
                only_count = count > 1 and size == count
                too_big = expanded + size > max_jobs
                row.fail(
                    "num_images" if only_count and too_big else None,
                    cell("num_images") if only_count and too_big else None,
                    (
                        f"expands the manifest past {max_jobs:,} jobs (this row: {total} = "
                        f"{shape or '1'}; the limit of one submit; --max-total-jobs raises it)"
                    )
                    if too_big
                    else f"expands the manifest past {MAX_PROMPT_TEXT:,} characters of prompt "
                    f"text (this row: {total} jobs of up to "
                    f"{prompt_t.longest + negative_t.longest:,} characters); split it up",
                )
                expanded = max_jobs + 1
            continue
        expanded += size
        base_seed = derived_seed(prompt, negative)  # variants of one row share their seed
        extra = {name: cells[i] for i, name in extra_names if i < len(cells) and cells[i] != ""}
        start = len(jobs)
        try:
            for text, text_vars in prompt_t.expand():
                if not text.strip() or len(text) > MAX_PROMPT_CHARS:
                    raise _RowFailed(
                        "prompt",
                        prompt,
                        f"expands to {text[:40]!r}, which is empty"
                        if not text.strip()
                        else f"expands to a prompt over {MAX_PROMPT_CHARS} characters",
                    )
                for neg_text, neg_vars in negative_t.expand():
                    if len(neg_text) > MAX_PROMPT_CHARS:
                        raise _RowFailed(
                            "negative_prompt",
                            negative,
                            f"expands to a prompt over {MAX_PROMPT_CHARS} characters",
                        )
                    for combo in itertools.product(*axes.values()):
                        values = dict(zip(axes, combo, strict=True))
                        spec = resolver.resolve(values, defaults)
                        seed = base_seed if spec["seed"] is None else int(spec["seed"])
                        found = _sampling_problem(spec)
                        if found:  # named by the cell that asked for it, if one did
                            asked, problem = found
                            named = next((c for c in asked if cell(c).strip()), None)
                            raise _RowFailed(named, cell(named) if named else None, problem)
                        if seed + count - 1 > SEED.max:
                            raise _RowFailed(
                                "num_images",
                                cell("num_images"),
                                f"seed {seed} + num_images passes {SEED.max}",
                            )
                        variants = {
                            VARIANT_PREFIX + name: str(value)
                            for name, value in values.items()
                            if len(axes[name]) > 1
                        }
                        job_extra = {**extra, **text_vars, **neg_vars, **variants}
                        if spec["preset"]:
                            job_extra["preset"] = str(spec["preset"])
                        if len(job_extra) > MAX_EXTRA:
                            raise _RowFailed(
                                None,
                                None,
                                f"has {len(job_extra)} metadata entries (meta_*, var_*, "
                                f"preset); a job carries at most {MAX_EXTRA}",
                            )
                        for k in range(count):
                            jobs.append(
                                JobSpec(
                                    prompt=text,
                                    negative_prompt=neg_text,
                                    seed=seed + k,
                                    steps=int(spec["steps"]),
                                    guidance_scale=float(spec["guidance_scale"]),
                                    width=int(spec["width"]),
                                    height=int(spec["height"]),
                                    scheduler=str(spec["scheduler"]),
                                    model=str(spec["model"]),
                                    quantization=str(spec["quantization"]),
                                    min_score=min_score,
                                    quality_tries=tries,
                                    priority=priority,
                                    tags=tags,
                                    output_name=output_name,
                                    output_dir=output_dir,
                                    line=line,
                                    image_index=k,
                                    extra=job_extra,
                                )
                            )
        except _RowFailed as exc:
            del jobs[start:]
            row.fail(exc.column, exc.value, exc.message)

    if issues:
        # in file order: by line, then by the column's place in the header
        issues.sort(key=lambda i: (i.line, index_of.get(i.column or "", -1)))
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
        wildcard_dir=p.absolute().parent,
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
