"""A judge that needs no network: what a scene image shows, read back by classical image analysis.

For an image of the synthetic world (``workers.tiny.scenes``) it says which background colour, shape
colour, shape, count, size and position it shows, and compares that with what a prompt states, so
a generated image can be scored against its prompt (``judge``) and a set of images against theirs
(``adherence``).

How it reads an image (``analyse``):

1. Noise is measured from neighbouring pixels' differences; a noisy image is smoothed a little.
2. Background: the commonest palette colour among the border pixels; its reference colour is
   their median.
3. Shape colour: the pixels furthest from the background, named by the palette colour whose
   blends with the background pass nearest (a small blurred shape never shows its pure colour).
   Every pixel's *coverage* is how far it lies along the line from the background colour to the
   shape colour, as anti-aliasing and blur blend them.
4. Count: connected components of coverage over one half, less specks much smaller than a small
   shape or than the largest component.
5. Shape: cumulants of each shape's coverage, which a Gaussian blur leaves unchanged: the
   vertical skew tells the upright triangle, the fourth cumulants along the axes against the
   diagonals tell the square from the circle. They are scaled by the shape's area, so they do
   not depend on its size.
6. Size: the side the coverage's area implies for the shape as ``render`` draws it, as a fraction
   of the image's shorter side, against thresholds between ``SIDE_FRACTION``'s sizes.
7. Position: the largest shape's centre in thirds of the image's width and height (for a
   triangle, the point ``render`` centres it on, a little above its centroid).

Colours are compared in CIELAB, so that distances between colours are about as the eye sees them.

On renders from ``scenes.render`` it is right on essentially every attribute, also blurred
(Gaussian, radius 1.5), noisy (sigma 15) or with a colour cast (20 per channel) — see
``tests/test_judge.py``.

Limits: it knows only this world's vocabulary (six colours, three upright shapes). It reads one
shape colour: shapes of several colours are judged by the commonest. Shapes that touch count as
one. A shape cut by the image edge measures a little small, and a blur as wide as a small shape
makes it measure larger (its purest pixels are not pure). An uneven background is taken off as a
plane around each shape, so blotches on it can skew the shape. Size and position are read from the
largest shape; with several shapes the position says only where that one is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from workers.tiny.scenes import COLOURS, POSITIONS, SIDE_FRACTION, Scene, parse_prompt, sample_scene

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from PIL import Image

ATTRIBUTES = ("background", "colour", "shape", "count", "size", "position")

# Held-out prompts: drawn from this seed, never trained on.
HELD_OUT_SEED = 20240601

# The least area a shape has: a small triangle at its smallest (sides jitter by 10%), over the
# shorter side squared. Components well under it are specks.
_SMALLEST_AREA = 0.5 * (SIDE_FRACTION["small"] * 0.9) ** 2
_SPECK_OF_SMALLEST = 0.25
_SPECK_OF_LARGEST = 0.2
# Size thresholds: geometric means between the sizes' extremes (each side jitters by +-10%).
_SMALL_MEDIUM = math.sqrt(SIDE_FRACTION["small"] * 1.1 * SIDE_FRACTION["medium"] * 0.9)
_MEDIUM_LARGE = math.sqrt(SIDE_FRACTION["medium"] * 1.1 * SIDE_FRACTION["large"] * 0.9)
# Area of each shape over its side squared, as render draws it (the square is drawn smaller than
# its box, to the circle's area).
_AREA_OVER_SIDE2 = {"circle": math.pi / 4, "square": math.pi / 4, "triangle": 0.5}
# Shapes are told apart by cumulants of their coverage, which a blur leaves as they are: the
# third of the vertical profile over area^1.5 ("skew": an upright triangle's is -2*sqrt(2)/135,
# a circle's and a square's 0), and how much flatter the square's profile is along the axes than
# along the diagonals (fourth cumulants, over area^2: the square's 1/240, the circle's 0).
_TRIANGLE_SKEW = -2 * math.sqrt(2) / 135
_SQUARE_SQUARENESS = 1 / 240
_PROTOTYPES = {"circle": (0.0, 0.0), "square": (0.0, 1.0), "triangle": (1.0, 0.0)}
# render puts a triangle's apex 1.15 half-sides above its centre and its base 0.85 below, so its
# centroid lies 0.55/3 half-sides below the centre
_TRIANGLE_CENTROID_BELOW = 0.55 / 3 / 2
# A shape's blurred edge is counted out to the first ring of pixels around the shapes whose mean
# coverage is under _TAIL, but no further than _REACH shorter sides
_TAIL = 0.01
_REACH = 1 / 4

# A pixel further than this from the background (RGB, 0-255) may be shape: about 0.4 of the
# distance between the closest pair of palette colours, and over twice that of noise of sigma 15.
_CANDIDATE_DISTANCE = 60.0
_NOISY = 4.0  # pixel noise (RGB sigma) above which the image is smoothed first
# How much of a shape's colour its purest pixels may show, blended with the background
_BLENDS = np.linspace(0.4, 1.0, 7)
_MOST_PUREST = 256  # pixels enough to name the shape colour
_ENOUGH_PIXELS = 4096  # for a median of the noise or the background

_NAMES = tuple(COLOURS)
_POSITION_AT = {cell: name for name, cell in POSITIONS.items()}


def _lab(rgb: NDArray[np.floating]) -> NDArray[np.float64]:
    """CIELAB (D65) of sRGB colours in 0-255, shape (..., 3)."""
    c = np.clip(np.asarray(rgb, dtype=np.float64) / 255.0, 0.0, 1.0)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array(
        [[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]]
    )
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


_PALETTE_RGB = np.array([COLOURS[n] for n in _NAMES], dtype=np.float64)
_PALETTE_LAB = _lab(_PALETTE_RGB)


def _nearest(rgb: NDArray[np.floating]) -> NDArray[np.intp]:
    """Index in the palette of the nearest colour (CIELAB distance) to each colour."""
    lab = _lab(rgb)
    d = ((lab[..., None, :] - _PALETTE_LAB) ** 2).sum(axis=-1)
    return np.asarray(d.argmin(axis=-1))


def _blended(rgb: NDArray[np.float64], bg: NDArray[np.float64], bg_index: int) -> NDArray[np.intp]:
    """Index in the palette of the colour, other than the background's, whose blends with the
    background pass nearest each colour (CIELAB distance).

    Blends are taken in RGB, as anti-aliasing and blur make them, with _BLENDS of the colour:
    a small blurred blue shape on yellow is grey at its purest, nearer white than blue.
    """
    paths = bg + _BLENDS[:, None, None] * (_PALETTE_RGB - bg)  # (blend, colour, rgb)
    d = ((_lab(rgb)[:, None, None, :] - _lab(paths)) ** 2).sum(axis=-1).min(axis=1)
    d[:, bg_index] = np.inf
    return np.asarray(d.argmin(axis=-1))


def _noise(pixels: NDArray[np.float64]) -> float:
    """The standard deviation of pixel noise, robustly (median of neighbours' differences)."""
    rows = pixels[:: 1 + pixels.shape[0] * pixels.shape[1] // _ENOUGH_PIXELS]
    return float(np.median(np.abs(np.diff(rows, axis=1)))) / (0.6745 * math.sqrt(2))


def _border(pixels: NDArray[np.float64], width: int) -> NDArray[np.float64]:
    h, w, _ = pixels.shape
    k = max(1, min(width, h // 4, w // 4))
    return np.concatenate(
        [
            pixels[:k].reshape(-1, 3),
            pixels[-k:].reshape(-1, 3),
            pixels[k:-k, :k].reshape(-1, 3),
            pixels[k:-k, -k:].reshape(-1, 3),
        ]
    )


@dataclass(frozen=True)
class _Moments:
    """One shape's coverage-weighted area, centroid and blur-invariant shape cumulants."""

    area: float
    x: float
    y: float
    skew: float
    squareness: float


def _moments(
    coverage: NDArray[np.float64],
    region: NDArray[np.bool_],
    distance: NDArray[np.float64],
    reach: float,
) -> _Moments:
    """The moments of the coverage in the part of ``region`` within ``reach`` of its shape, less
    the plane that fits the coverage in the three pixels beyond (an uneven background)."""
    ys, xs = np.nonzero(region & (distance <= reach))
    weight = coverage[ys, xs]
    ry, rx = np.nonzero(region & (distance > reach) & (distance <= reach + 3))
    if len(ry) >= 12:
        design = np.stack([np.ones(len(ry)), rx, ry], axis=1).astype(np.float64)
        plane, *_ = np.linalg.lstsq(design, coverage[ry, rx], rcond=None)
        weight = weight - (plane[0] + plane[1] * xs + plane[2] * ys)
    # Not clipped: noise then averages out instead of adding mass
    area = float(weight.sum())
    if area <= 1.0:
        return _Moments(max(area, 0.0), float(xs.mean()), float(ys.mean()), 0.0, 0.0)
    cx = float(weight @ xs) / area
    cy = float(weight @ ys) / area
    x, y = xs - cx, ys - cy

    def kurt(u: NDArray[np.floating]) -> float:
        m2 = float(weight @ u**2) / area
        return float(weight @ u**4) / area - 3 * m2 * m2

    diagonal = kurt((x + y) / math.sqrt(2)) + kurt((x - y) / math.sqrt(2))
    return _Moments(
        area=area,
        x=cx,
        y=cy,
        skew=float(weight @ y**3) / area / area**1.5,
        squareness=(diagonal - kurt(x) - kurt(y)) / 2 / area**2,
    )


def _shape_of(skew: float, squareness: float) -> str:
    point = (skew / _TRIANGLE_SKEW, squareness / _SQUARE_SQUARENESS)
    return min(_PROTOTYPES, key=lambda name: math.dist(point, _PROTOTYPES[name]))


def _size_of(side: float) -> str:
    if side < _SMALL_MEDIUM:
        return "small"
    return "medium" if side < _MEDIUM_LARGE else "large"


def analyse(image: Image.Image) -> dict[str, str | int | None]:
    """Every attribute an image shows: background, colour, shape, count, size, position.

    ``count`` is 0 and the shape's attributes None when no shape stands out from the background;
    ``size`` and ``position`` are those of the largest shape.
    """
    found: dict[str, str | int | None] = dict.fromkeys(ATTRIBUTES)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w, _ = pixels.shape
    base = min(w, h)

    # 1. Noise, from differences of neighbouring pixels (edges are too few to move the median);
    # a noisy image is smoothed, which leaves the cumulants of step 5 as they are
    if w > 1 and _noise(pixels) > _NOISY:
        pixels = ndimage.gaussian_filter(pixels, sigma=(1.0, 1.0, 0.0), mode="nearest")

    # 2. Background: the commonest palette colour of the border, its median as reference
    border = _border(pixels, max(1, base // 32))
    named = _nearest(border)
    bg_index = int(np.bincount(named, minlength=len(_NAMES)).argmax())
    bg = np.median(border[named == bg_index], axis=0)
    found["background"] = _NAMES[bg_index]
    found["count"] = 0

    # 3. Foreground: the shape colour from the pixels furthest from the background (a blurred
    # small shape has few pure pixels), named as the colour whose blends with the background
    # pass closest; then every pixel by how far along the line from background to shape colour
    # it lies: its coverage, if the image is a blend
    contrast = np.sqrt(((pixels - bg) ** 2).sum(axis=-1))
    far = contrast[contrast > _CANDIDATE_DISTANCE]
    if len(far) == 0:
        return found
    purest = pixels[contrast >= np.quantile(far, 0.75)]
    purest = purest[:: 1 + len(purest) // _MOST_PUREST]
    named = _blended(purest, bg, bg_index)
    fg_index = int(np.bincount(named, minlength=len(_NAMES)).argmax())
    fg = np.median(purest[named == fg_index], axis=0)
    found["colour"] = _NAMES[fg_index]
    axis = fg - bg
    coverage = ((pixels - bg) @ axis) / float(axis @ axis)

    # 4. Shapes: connected components, specks dropped
    components, n = ndimage.label(coverage > 0.5)
    if n == 0:
        return found
    areas = np.bincount(components.ravel(), minlength=n + 1)[1:]
    keep = areas >= max(_SPECK_OF_SMALLEST * _SMALLEST_AREA * base * base, 1.0)
    keep &= areas >= _SPECK_OF_LARGEST * areas.max()
    found["count"] = int(keep.sum())
    if not keep.any():
        return found
    # Each shape's neighbourhood: the pixels nearest it, out to where its blurred edge fades
    kept = np.flatnonzero(keep) + 1
    distance, (iy, ix) = ndimage.distance_transform_edt(
        ~np.isin(components, kept), return_indices=True
    )
    # (clipping of noise at black or white, or an uneven background, leaves the background
    # a little coverage: measured away from the shapes and taken off)
    outside = distance > 2
    if outside.any():
        away = coverage[outside]
        coverage = coverage - float(np.median(away[:: 1 + len(away) // _ENOUGH_PIXELS]))
    rings = np.ceil(distance).astype(np.intp).ravel()
    in_ring = np.bincount(rings, minlength=2)
    ring_mean = np.bincount(rings, weights=coverage.ravel()) / np.maximum(in_ring, 1)
    # (where a ring is no fainter than the one inside it, what is left is the background's)
    flat = np.r_[False, ring_mean[1:] >= ring_mean[:-1]]
    faded = np.flatnonzero(((ring_mean < _TAIL) | flat) & (in_ring > 0))
    reach = float(faded[faded >= 2][0]) if (faded >= 2).any() else float(len(ring_mean))
    reach = min(reach, max(2.0, _REACH * base))
    nearest = components[iy, ix]
    shapes = [_moments(coverage, nearest == label, distance, reach) for label in kept]

    # 5. Shape: from the area-weighted mean of the shapes' cumulants
    weights = np.array([m.area for m in shapes])
    if weights.sum() <= 0:
        return found
    skew = float(np.average([m.skew for m in shapes], weights=weights))
    squareness = float(np.average([m.squareness for m in shapes], weights=weights))
    shape = _shape_of(skew, squareness)
    found["shape"] = shape

    # 6. Size: the side the shapes' area implies for their shape
    area = float(np.median(weights))
    found["size"] = _size_of(math.sqrt(max(area, 0.0) / _AREA_OVER_SIDE2[shape]) / base)

    # 7. Position of the largest, in thirds, of the point render centres it on
    largest = shapes[int(weights.argmax())]
    centre_y = largest.y
    if shape == "triangle":
        centre_y -= _TRIANGLE_CENTROID_BELOW * math.sqrt(largest.area / _AREA_OVER_SIDE2[shape])
    col = min(2, max(0, int(3 * (largest.x + 0.5) / w)))
    row = min(2, max(0, int(3 * (centre_y + 0.5) / h)))
    found["position"] = _POSITION_AT[(col, row)]
    return found


@dataclass(frozen=True)
class Judgement:
    """What a prompt states about an image and what the image shows."""

    prompt: str
    expected: dict[str, str | int]
    found: dict[str, str | int | None]

    @property
    def right(self) -> tuple[str, ...]:
        """The stated attributes the image shows."""
        return tuple(k for k, v in self.expected.items() if self.found.get(k) == v)

    @property
    def score(self) -> float:
        """Fraction of the stated attributes the image shows, in [0, 1]."""
        return len(self.right) / len(self.expected)


def judge(image: Image.Image, prompt: str) -> Judgement | None:
    """How far an image shows its prompt; None when the prompt is not in the scenes grammar."""
    scene = parse_prompt(prompt)
    if scene is None:
        return None
    expected = scene.attributes()
    seen = analyse(image)
    return Judgement(prompt, expected, {k: seen[k] for k in expected})


def adherence(judgements: Iterable[Judgement]) -> float:
    """Fraction of all stated attributes that the images show (micro average over judgements)."""
    right = stated = 0
    for j in judgements:
        right += len(j.right)
        stated += len(j.expected)
    if stated == 0:
        raise ValueError("adherence of no judgements is undefined")
    return right / stated


def held_out_scenes(n: int = 60) -> list[Scene]:
    """The first ``n`` distinct scenes drawn from ``HELD_OUT_SEED``: never trained on.

    Deterministic, and a shorter list is a prefix of a longer one.
    """
    rng = np.random.default_rng(HELD_OUT_SEED)
    scenes: list[Scene] = []
    seen: set[str] = set()
    while len(scenes) < n:
        scene = sample_scene(rng)
        if scene.prompt not in seen:
            seen.add(scene.prompt)
            scenes.append(scene)
    return scenes


HELD_OUT_PROMPTS: tuple[str, ...] = tuple(s.prompt for s in held_out_scenes())
