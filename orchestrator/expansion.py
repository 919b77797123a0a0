"""How one manifest row becomes many jobs: prompt alternatives, wildcards and grid columns.

- ``{red|green|blue}`` in a prompt is an axis of alternatives (a group without ``|`` of its own
  is left as written, so prompts that use braces for other tools still mean what they meant).
- ``__name__`` is an axis of the lines of ``name.txt`` beside the manifest (or in a
  ``wildcards/`` folder there); blank lines and ``#`` comments are skipped.
- Choices nest: ``{a|{b|c}}`` is a, b or c; a wildcard file's lines may hold wildcards and
  alternatives of their own. Up to MAX_DEPTH levels; a wildcard that uses itself, through
  other files or not, is an error naming the file, line and column where the loop closes.
- ``20|50`` in a column is an axis of values; ``1-8`` in ``seed`` or ``steps`` is a range.

Every axis with more than one value is expanded as a grid, and every job records which value of
each axis it got, as ``var_<axis>`` metadata (``var_prompt_1`` for the prompt's first group of
alternatives, ``var_<name>`` for a wildcard (``var_negative_...`` in the negative prompt),
``var_<column>`` for a column); a nested choice is recorded in the text its outer one became.
Sizes are counted before anything is expanded (each wildcard file once, however often it is
used), so an absurd grid is refused without being built.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

VARIANT_PREFIX = "var_"
LIST_SEPARATOR = "|"
_WILDCARD = re.compile(r"__([A-Za-z0-9][A-Za-z0-9_\-]*(?:/[A-Za-z0-9][A-Za-z0-9_\-]*)*)__")
_RANGE = re.compile(r"\s*(\d{1,12})\s*-\s*(\d{1,12})\s*")
MAX_WILDCARD_BYTES = 16 * 1024 * 1024
MAX_VALUE_CHARS = 10_000  # one alternative or wildcard line (a prompt's own limit)
MAX_DEPTH = 8  # choices inside choices: {a|{b|c}} is 2 deep, so is __x__ with a {..|..} line
COUNT_CAP = 10**31  # counts are kept exact below this; above, "more than 10^30" is enough


class ExpansionError(ValueError):
    """What is wrong with a row's expansion, in words for its manifest issue. ``located``:
    the words already say where in a wildcard file (file:line:column)."""

    def __init__(self, message: str, *, located: bool = False) -> None:
        super().__init__(message)
        self.located = located


@dataclass(frozen=True, eq=False)
class Choices:
    """The texts a choice picks from (a group's alternatives, a wildcard file's lines), each
    of which may hold choices of its own; one object per wildcard file, however often used,
    so that what is counted of it is counted once."""

    options: tuple[Template, ...]

    @cached_property
    def count(self) -> int:
        """How many texts it stands for (capped at COUNT_CAP)."""
        return min(COUNT_CAP, sum(o.size for o in self.options))

    @cached_property
    def longest(self) -> int:
        return max(o.longest for o in self.options)

    @cached_property
    def height(self) -> int:
        """How deep choices nest in it (1: none inside)."""
        return 1 + max(o.height for o in self.options)

    def texts(self) -> Iterator[str]:
        for option in self.options:
            yield from option.texts()


@dataclass(frozen=True, eq=False)
class Axis:
    """A choice in a text. ``key`` is its variant's metadata name (``var_...``) for a choice
    of the row's own text; None for one nested in another (the outer choice records the text
    it became)."""

    key: str | None
    choices: Choices

    @property
    def count(self) -> int:
        return self.choices.count


@dataclass(frozen=True, eq=False)
class Template:
    """A text with its choices: ``parts`` alternate literal text and axes."""

    parts: tuple[str | Axis, ...]

    @property
    def axes(self) -> list[Axis]:
        return [p for p in self.parts if isinstance(p, Axis)]

    @property
    def factors(self) -> list[int]:
        """How many values each axis has (their product is the number of texts)."""
        return [a.count for a in self.axes]

    @cached_property
    def size(self) -> int:
        return min(COUNT_CAP, math.prod(self.factors))

    @cached_property
    def longest(self) -> int:
        """The length of the longest text it expands to."""
        return sum(len(p) if isinstance(p, str) else p.choices.longest for p in self.parts)

    @cached_property
    def height(self) -> int:
        return max((a.choices.height for a in self.axes), default=0)

    def texts(self) -> Iterator[str]:
        """Every text it expands to (a nested choice's texts in its outer choice's place)."""
        for text, _values in self.expand():
            yield text

    def expand(self) -> Iterator[tuple[str, dict[str, str]]]:
        """Each text with the values its keyed axes took (only axes with more than one)."""
        slots = [[p] if isinstance(p, str) else list(p.choices.texts()) for p in self.parts]
        keyed = [
            (i, p.key)
            for i, p in enumerate(self.parts)
            if isinstance(p, Axis) and p.key is not None and len(slots[i]) > 1
        ]
        for choice in itertools.product(*slots):
            yield "".join(choice), {key: choice[i] for i, key in keyed}


@dataclass(frozen=True)
class _Text:
    """A text being parsed and where it came from: a manifest's cell (``file`` None: the
    manifest's issue names file, line and column) or a wildcard file's line."""

    text: str
    file: Path | None = None
    line: int = 0

    def at(self, index: int) -> str:
        """``index`` (0-based) in the text, in words: "at character 7" or "at FILE:3:7"."""
        if self.file is None:
            return f"at character {index + 1}"
        return f"at {self.file}:{self.line}:{index + 1}"

    def error(self, index: int, message: str) -> ExpansionError:
        return ExpansionError(f"{self.at(index)}: {message}", located=self.file is not None)


class Wildcards:
    """The wildcard files beside one manifest, each read and parsed once; a file's lines may
    hold wildcards and alternatives of their own."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._options: dict[str, Choices] = {}
        self._chain: list[str] = []  # the files being parsed, outermost first

    def options(self, name: str) -> Choices:
        """The lines of wildcard ``name``, parsed (ExpansionError for a file that is missing,
        unreadable, nests too deep or uses itself through other files)."""
        if name in self._options:
            return self._options[name]
        if name in self._chain:
            loop = [*self._chain[self._chain.index(name) :], name]
            raise ExpansionError(
                f"wildcard __{name}__ uses itself (" + " -> ".join(f"__{n}__" for n in loop) + ")"
            )
        if len(self._chain) >= MAX_DEPTH:
            raise ExpansionError(
                f"wildcards nest more than {MAX_DEPTH} deep ("
                + " -> ".join(f"__{n}__" for n in [*self._chain, name])
                + ")"
            )
        path, lines = self._read(name)
        self._chain.append(name)
        try:
            options = tuple(_parse(_Text(line, path, number), self) for number, line in lines)
        finally:
            self._chain.pop()
        self._options[name] = Choices(options)
        return self._options[name]

    def _read(self, name: str) -> tuple[Path, list[tuple[int, str]]]:
        """The file of wildcard ``name`` and its lines with their numbers (blank lines and
        ``#`` comments skipped)."""
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
        lines = [
            (number, s)
            for number, raw in enumerate(text.splitlines(), 1)
            if (s := raw.strip()) and not s.startswith("#")
        ]
        if not lines:
            raise ExpansionError(f"wildcard file {path} has no lines")
        seen: dict[str, int] = {}
        for number, line in lines:
            if len(line) > MAX_VALUE_CHARS:
                raise ExpansionError(
                    f"wildcard file {path}:{number}: the line is over {MAX_VALUE_CHARS:,} "
                    "characters",
                    located=True,
                )
            if line in seen:
                raise ExpansionError(
                    f"wildcard file {path}:{number}: {line[:60]!r} is listed twice (also on "
                    f"line {seen[line]})",
                    located=True,
                )
            seen[line] = number
        return path, lines


def _braces(text: str) -> dict[int, int]:
    """Where each ``{`` that has a matching ``}`` closes (one pass; unmatched ones are text)."""
    pairs: dict[int, int] = {}
    open_at: list[int] = []
    for i, c in enumerate(text):
        if c == "{":
            open_at.append(i)
        elif c == "}" and open_at:
            pairs[open_at.pop()] = i
    return pairs


def _bars(text: str, start: int, end: int, pairs: dict[int, int]) -> list[int]:
    """The ``|`` between ``start`` and ``end`` that are not inside a nested group."""
    bars = []
    i = start
    while i < end:
        if text[i] == "{" and i in pairs:
            i = pairs[i] + 1
            continue
        if text[i] == "|":
            bars.append(i)
        i += 1
    return bars


def _parse(source: _Text, wildcards: Wildcards, labels: list[str | None] | None = None) -> Template:
    """A text's template: ``{a|b}`` groups (braces without a ``|`` of their own are text, and
    what is inside them is still parsed) and ``__name__`` wildcards, nested in each other up
    to MAX_DEPTH. ``labels``, when given, gets what each axis of the text's own level is: a
    wildcard's name, or None for a group."""
    return _parse_range(source, 0, len(source.text), _braces(source.text), wildcards, 0, labels)


def _parse_range(
    source: _Text,
    start: int,
    end: int,
    pairs: dict[int, int],
    wildcards: Wildcards,
    depth: int,
    labels: list[str | None] | None,
) -> Template:
    text = source.text
    parts: list[str | Axis] = []
    i = literal = start
    while i < end:
        c = text[i]
        if c == "{" and i in pairs:
            close = pairs[i]
            bars = _bars(text, i + 1, close, pairs)
            if not bars:  # braces for another tool: text (what is inside is read on)
                i += 1
                continue
            if depth + 1 > MAX_DEPTH:
                raise source.error(i, f"choices nest more than {MAX_DEPTH} deep")
            bounds = list(zip([i + 1, *(b + 1 for b in bars)], [*bars, close], strict=True))
            values = [text[a:b] for a, b in bounds]
            if len(set(values)) != len(values):
                twice = next(v for v in values if values.count(v) > 1)
                message = f"{{{text[i + 1 : close][:60]}}} lists {twice!r} twice"
                if depth or source.file is not None:
                    raise source.error(i, message)
                raise ExpansionError(message)
            options = tuple(
                _parse_range(source, a, b, pairs, wildcards, depth + 1, None) for a, b in bounds
            )
            parts += [text[literal:i], Axis(None, Choices(options))]
            if labels is not None:
                labels.append(None)
            i = literal = close + 1
            continue
        if c == "_" and (m := _WILDCARD.match(text, i, end)) is not None:
            name = m.group(1)
            try:
                choices = wildcards.options(name)
            except ExpansionError as exc:
                if exc.located or source.file is None:
                    raise
                raise source.error(i, str(exc)) from None
            if depth + choices.height > MAX_DEPTH:
                raise source.error(i, f"__{name}__ nests choices more than {MAX_DEPTH} deep")
            parts += [text[literal:i], Axis(None, choices)]
            if labels is not None:
                labels.append(name)
            i = literal = m.end()
            continue
        i += 1
    parts.append(text[literal:end])
    return Template(tuple(p for p in parts if p != ""))


def parse_text(
    text: str, column: str, wildcards: Wildcards, reserved: Iterable[str] = ()
) -> Template:
    """Split a prompt into literal text and axes (variant keys in ``reserved`` are taken).

    Only the row's own choices get a variant key: ``var_<column>_<n>`` for its n-th group,
    ``var_<name>`` for a wildcard; a choice nested in one of them is recorded by the text its
    outer choice became."""
    labels: list[str | None] = []
    template = _parse(_Text(text), wildcards, labels)
    used: set[str] = set(reserved)
    groups = 0
    owner = "" if column == "prompt" else "negative_"
    keys = []
    for label in labels:
        if label is None:
            groups += 1
            key = f"{VARIANT_PREFIX}{column}_{groups}"
        else:
            key = VARIANT_PREFIX + owner + label.replace("/", "_").replace("-", "_").lower()
        base, n = key, 1
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys.append(key)
    named = iter(keys)
    return Template(
        tuple(Axis(next(named), p.choices) if isinstance(p, Axis) else p for p in template.parts)
    )


def split_list(raw: str) -> list[str]:
    """A cell's values: ``a|b|c`` -> three; anything else -> itself."""
    return raw.split(LIST_SEPARATOR) if LIST_SEPARATOR in raw else [raw]


def int_range(raw: str) -> tuple[int, int] | None:
    """``lo-hi`` (inclusive) as numbers, or None when the cell is not a range."""
    match = _RANGE.fullmatch(raw)
    return (int(match.group(1)), int(match.group(2))) if match else None
