"""How one manifest row becomes many jobs: prompt alternatives, wildcards and grid columns.

- ``{red|green|blue}`` in a prompt is an axis of alternatives (a group without ``|`` is left as
  written, so prompts that use braces for other tools still mean what they meant).
- ``__name__`` is an axis of the lines of ``name.txt`` beside the manifest (or in a
  ``wildcards/`` folder there); blank lines and ``#`` comments are skipped.
- ``20|50`` in a column is an axis of values; ``1-8`` in ``seed`` or ``steps`` is a range.

Every axis with more than one value is expanded as a grid, and every job records which value of
each axis it got, as ``var_<axis>`` metadata (``var_prompt_1`` for the prompt's first group of
alternatives, ``var_<name>`` for a wildcard (``var_negative_...`` in the negative prompt),
``var_<column>`` for a column). Sizes are counted
before anything is expanded, so an absurd grid is refused without being built.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

VARIANT_PREFIX = "var_"
LIST_SEPARATOR = "|"
_ALTERNATIVES = re.compile(r"\{([^{}]*\|[^{}]*)\}")
_WILDCARD = re.compile(r"__([A-Za-z0-9][A-Za-z0-9_\-]*(?:/[A-Za-z0-9][A-Za-z0-9_\-]*)*)__")
_TOKEN = re.compile(f"{_ALTERNATIVES.pattern}|{_WILDCARD.pattern}")
_RANGE = re.compile(r"\s*(\d{1,12})\s*-\s*(\d{1,12})\s*")
MAX_WILDCARD_BYTES = 16 * 1024 * 1024
MAX_VALUE_CHARS = 10_000  # one alternative or wildcard line (a prompt's own limit)


class ExpansionError(ValueError):
    """What is wrong with a row's expansion, in words for its manifest issue."""


@dataclass(frozen=True)
class Axis:
    key: str  # the variant's metadata name, ``var_...``
    values: Sequence[str]


@dataclass(frozen=True)
class Template:
    """A text with its axes: ``parts`` alternate literal text and axis slots."""

    parts: tuple[str | Axis, ...]

    @property
    def axes(self) -> list[Axis]:
        return [p for p in self.parts if isinstance(p, Axis)]

    @property
    def factors(self) -> list[int]:
        """How many values each axis has (their product is the number of texts)."""
        return [len(a.values) for a in self.axes]

    @property
    def size(self) -> int:
        return math.prod(self.factors)

    @property
    def longest(self) -> int:
        """The length of the longest text it expands to."""
        return sum(
            len(p) if isinstance(p, str) else max(len(v) for v in p.values) for p in self.parts
        )

    def expand(self) -> Iterator[tuple[str, dict[str, str]]]:
        """Each text with the values its axes took (only axes with more than one value)."""
        axes = self.axes
        for choice in itertools.product(*(a.values for a in axes)):
            chosen = iter(choice)
            text = "".join(p if isinstance(p, str) else next(chosen) for p in self.parts)
            yield text, {a.key: v for a, v in zip(axes, choice, strict=True) if len(a.values) > 1}


class Wildcards:
    """The wildcard files beside one manifest, each read once."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._lines: dict[str, list[str]] = {}

    def lines(self, name: str) -> list[str]:
        if name in self._lines:
            return self._lines[name]
        if self.folder is None:
            raise ExpansionError(f"wildcard __{name}__ needs the manifest to be a file")
        candidates = [self.folder / f"{name}.txt", self.folder / "wildcards" / f"{name}.txt"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ExpansionError(
                f"wildcard __{name}__ has no file: looked for "
                + " and ".join(str(p) for p in candidates)
            )
        try:
            if path.stat().st_size > MAX_WILDCARD_BYTES:
                raise ExpansionError(f"wildcard file {path} is over 16 MB")
            text = path.read_bytes().decode("utf-8-sig")
        except OSError as exc:
            raise ExpansionError(f"wildcard file {path} cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ExpansionError(f"wildcard file {path} is not UTF-8") from None
        lines = [s for raw in text.splitlines() if (s := raw.strip()) and not s.startswith("#")]
        if not lines:
            raise ExpansionError(f"wildcard file {path} has no lines")
        for number, line in enumerate(lines, 1):
            if len(line) > MAX_VALUE_CHARS:
                raise ExpansionError(
                    f"wildcard file {path}: its line {number} (not counting blanks and "
                    f"comments) is over {MAX_VALUE_CHARS:,} characters"
                )
        seen: set[str] = set()
        for line in lines:
            if line in seen:
                raise ExpansionError(f"wildcard file {path} lists {line[:60]!r} twice")
            seen.add(line)
        self._lines[name] = lines
        return lines


def parse_text(
    text: str, column: str, wildcards: Wildcards, reserved: Iterable[str] = ()
) -> Template:
    """Split a prompt into literal text and axes (variant keys in ``reserved`` are taken)."""
    parts: list[str | Axis] = []
    used: set[str] = set(reserved)
    groups = 0
    pos = 0
    for match in _TOKEN.finditer(text):
        parts.append(text[pos : match.start()])
        pos = match.end()
        if match.group(1) is not None:
            groups += 1
            key = f"{VARIANT_PREFIX}{column}_{groups}"
            values: Sequence[str] = match.group(1).split(LIST_SEPARATOR)
            if len(set(values)) != len(values):
                twice = next(v for v in values if values.count(v) > 1)
                raise ExpansionError(f"{{{match.group(1)[:60]}}} lists {twice!r} twice")
        else:
            name = match.group(2)
            owner = "" if column == "prompt" else "negative_"
            key = VARIANT_PREFIX + owner + name.replace("/", "_").replace("-", "_").lower()
            values = wildcards.lines(name)
        base, n = key, 1
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        parts.append(Axis(key, values))
    parts.append(text[pos:])
    return Template(tuple(p for p in parts if p != ""))


def split_list(raw: str) -> list[str]:
    """A cell's values: ``a|b|c`` -> three; anything else -> itself."""
    return raw.split(LIST_SEPARATOR) if LIST_SEPARATOR in raw else [raw]


def int_range(raw: str) -> tuple[int, int] | None:
    """``lo-hi`` (inclusive) as numbers, or None when the cell is not a range."""
    match = _RANGE.fullmatch(raw)
    return (int(match.group(1)), int(match.group(2))) if match else None
