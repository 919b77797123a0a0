"""The synthetic world the built-in model is trained on: simple scenes and the prompts that say them.

A scene is a plain background with one to three identical shapes on it ("two small yellow squares
on a black background"). Its vocabulary is colours, shapes, counts, sizes and positions; each is an
*attribute* a prompt may state and an image may or may not show. This module is the single place
that vocabulary is spelled: the training script draws scenes from it, and the judge
(``workers.tiny.judge``) parses a prompt back into the attributes it should find in an image.

Nothing here imports torch: rendering is PIL and numpy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 50),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
SIZES = ("small", "medium", "large")  # "medium" is never said: it is the size when none is
# A shape's side as a fraction of the image's shorter side.
SIDE_FRACTION = {"small": 0.19, "medium": 0.3, "large": 0.42}
# Positions a single shape may be given: name -> (column, row) in a 3x3 grid.
POSITIONS: dict[str, tuple[int, int]] = {
    "at the top left": (0, 0),
    "at the top": (1, 0),
    "at the top right": (2, 0),
    "on the left": (0, 1),
    "in the center": (1, 1),
    "on the right": (2, 1),
    "at the bottom left": (0, 2),
    "at the bottom": (1, 2),
    "at the bottom right": (2, 2),
}
# Where a grid cell's shape is centred, as a fraction of the width or height.
CELL_CENTRE = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Scene:
    """What a prompt says: every field but ``size`` and ``position`` is always stated.

    ``size`` is None when the prompt does not say one (the shape is then medium);
    ``position`` is None when it does not say one (the shapes are then anywhere).
    """

    background: str
    colour: str
    shape: str
    count: int = 1
    size: str | None = None
    position: str | None = None

    def __post_init__(self) -> None:
        if self.background not in COLOURS or self.colour not in COLOURS:
            raise ValueError(f"unknown colour in {self}")
        if self.colour == self.background:
            raise ValueError(f"shape and background are both {self.colour}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.count not in COUNT_WORDS:
            raise ValueError(f"count {self.count} is not 1, 2 or 3")
        if self.size is not None and self.size not in ("small", "large"):
            raise ValueError(f"size {self.size!r} is not small or large")
        if self.position is not None and (self.position not in POSITIONS or self.count != 1):
            raise ValueError(f"position {self.position!r} needs one shape and a known place")
        if self.count > 1 and self.size == "large":
            raise ValueError("only one large shape fits")

    @property
    def prompt(self) -> str:
        words = [COUNT_WORDS[self.count]]
        if self.size:
            words.append(self.size)
        words.append(self.colour)
        words.append(self.shape + ("s" if self.count > 1 else ""))
        if self.position:
            words.append(self.position)
        words.append(f"on a {self.background} background")
        return " ".join(words)

    def attributes(self) -> dict[str, str | int]:
        """The attributes an image of this scene must show, by name (only those stated)."""
        out: dict[str, str | int] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return out


_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_POSITION = "|".join(re.escape(p) for p in sorted(POSITIONS, key=len, reverse=True))
_PROMPT = re.compile(
    rf"^(?P<count>an?|one|two|three)\s+(?:(?P<size>small|large)\s+)?(?P<colour>{_COLOUR})\s+"
    rf"(?P<shape>{_SHAPE})(?P<plural>s?)\s+(?:(?P<position>{_POSITION})\s+)?"
    rf"on\s+an?\s+(?P<background>{_COLOUR})\s+background\.?$"
)
_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
_WORDS = {
    *_COUNTS,
    "small",
    "large",
    *COLOURS,
    *SHAPES,
    *(s + "s" for s in SHAPES),
    *(w for p in POSITIONS for w in p.split()),
    "on",
    "background",
}


def _positions_text(width: int = 100) -> str:
    """The positions, wrapped between names (never inside one) under their label."""
    label = "positions (one shape): "
    lines = [label]
    for k, name in enumerate(POSITIONS):
        item = name + (" |" if k < len(POSITIONS) - 1 else "")
        if len(lines[-1]) + len(item) > width and lines[-1].strip():
            lines[-1] = lines[-1].rstrip()
            lines.append(" " * len(label))
        lines[-1] += item + " "
    return "\n".join(line.rstrip() for line in lines)


# The prompts this world says, as the README shows them; ``parse_prompt`` reads exactly these.
GRAMMAR = "\n".join(
    [
        f"a [{'|'.join(s for s in SIZES if s != 'medium')}] <colour> <shape> [<position>] "
        "on a <colour> background",
        f"{'|'.join(COUNT_WORDS[n] for n in COUNT_WORDS if n > 1)} [small] <colour> <shape>s "
        "on a <colour> background",
        f"colours: {' '.join(COLOURS)} (the shapes' colour is not the background's)",
        f"shapes: {' '.join(SHAPES)}",
        _positions_text(),
        "also read: 'an' or 'one' for 'a'; any case and spacing; a full stop at the end",
    ]
)


def prompt_problem(prompt: str) -> str | None:
    """Why a prompt is outside this world's grammar (``GRAMMAR``), in a few words; None when
    it is a scene of this world."""
    found = _parse(prompt)
    return found if isinstance(found, str) else None


def parse_prompt(prompt: str) -> Scene | None:
    """The scene a prompt describes, or None when it is not in this world's grammar."""
    found = _parse(prompt)
    return found if isinstance(found, Scene) else None


def _parse(prompt: str) -> Scene | str:
    text = " ".join(prompt.lower().split())
    m = _PROMPT.match(text)
    if m is None:
        words = text.rstrip(".").split()
        unknown = next((w for w in words if w not in _WORDS), None)
        if unknown is not None:
            return f"{unknown!r} is not a word of its world"
        return "its words are not in the grammar's order"
    count = _COUNTS[m["count"]]
    if bool(m["plural"]) != (count > 1):
        return f"{m['count']!r} goes with {m['shape'] + ('s' if count > 1 else '')!r}"
    try:
        return Scene(
            background=m["background"],
            colour=m["colour"],
            shape=m["shape"],
            count=count,
            size=m["size"],
            position=" ".join(m["position"].split()) if m["position"] else None,
        )
    except ValueError as exc:
        return str(exc)


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random scene from the whole vocabulary (each attribute drawn independently)."""
    colours = list(COLOURS)
    background = colours[int(rng.integers(len(colours)))]
    others = [c for c in colours if c != background]
    colour = others[int(rng.integers(len(others)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    count = int(rng.choice([1, 1, 2, 3]))
    size_pick = int(rng.integers(3))
    size = (None, "small", "large")[size_pick]
    if count > 1 and size == "large":
        size = None
    position = None
    if count == 1 and rng.random() < 0.6:
        names = list(POSITIONS)
        position = names[int(rng.integers(len(names)))]
    return Scene(background, colour, shape, count, size, position)


@dataclass(frozen=True)
class Placed:
    """One shape as drawn: centre and side in pixels."""

    cx: float
    cy: float
    side: float


def layout(scene: Scene, rng: np.random.Generator, width: int, height: int) -> list[Placed]:
    """Where the scene's shapes go: a stated position puts one shape in its grid cell (with a
    little jitter); otherwise the shapes are scattered without touching."""
    base = min(width, height)
    side = SIDE_FRACTION[scene.size or "medium"] * base * float(rng.uniform(0.9, 1.1))
    if scene.position is not None:
        col, row = POSITIONS[scene.position]
        jitter = 0.03 * base
        cx = CELL_CENTRE[col] * width + float(rng.uniform(-jitter, jitter))
        cy = CELL_CENTRE[row] * height + float(rng.uniform(-jitter, jitter))
        return [Placed(cx, cy, side)]
    margin = side / 2 + 1
    gap = side + 0.04 * base
    for _ in range(200):
        placed: list[Placed] = []
        for _ in range(scene.count):
            cx = float(rng.uniform(margin, width - margin))
            cy = float(rng.uniform(margin, height - margin))
            if all(max(abs(cx - p.cx), abs(cy - p.cy)) > gap for p in placed):
                placed.append(Placed(cx, cy, side))
        if len(placed) == scene.count:
            return placed
    raise RuntimeError(f"could not place {scene.count} shapes of side {side:.1f}")


SUPERSAMPLE = 4


def render(
    scene: Scene, rng: np.random.Generator, width: int = 64, height: int = 64
) -> Image.Image:
    """Draw a scene (anti-aliased: drawn at 4x and reduced)."""
    from PIL import Image, ImageDraw

    s = SUPERSAMPLE
    image = Image.new("RGB", (width * s, height * s), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    for p in layout(scene, rng, width, height):
        half = p.side * s / 2
        x, y = p.cx * s, p.cy * s
        if scene.shape == "circle":
            draw.ellipse((x - half, y - half, x + half, y + half), fill=fill)
        elif scene.shape == "square":
            # Same area as the circle's box would suggest to the eye: a square a bit smaller.
            h = half * math.sqrt(math.pi / 4)
            draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
        else:
            # An upright triangle filling the box's width, its centroid at the centre.
            top = y - half * 1.15
            bottom = y + half * 0.85
            draw.polygon([(x, top), (x + half, bottom), (x - half, bottom)], fill=fill)
    return image.resize((width, height), Image.Resampling.BOX)
