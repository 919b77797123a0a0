"""The judge reads rendered scenes back: clean, at other sizes, degraded, and against wrong prompts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageFilter

from workers.tiny.judge import (
    ATTRIBUTES,
    HELD_OUT_PROMPTS,
    Judgement,
    adherence,
    analyse,
    held_out_scenes,
    judge,
)
from workers.tiny.scenes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    parse_prompt,
    render,
    sample_scene,
)

Degrade = Callable[[Image.Image, np.random.Generator], Image.Image]


def _as_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(1.5))


def _noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    return _as_image(pixels + rng.normal(0.0, 15.0, pixels.shape))


def _shift(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    cast = rng.choice([-20.0, 20.0], size=3)  # the full cast, each channel up or down
    return _as_image(np.asarray(image, dtype=np.float64) + cast)


def _all_three(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _shift(_noise(_blur(image, rng), rng), rng)


def _clean(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image


def _judged(
    n: int, seed: int, width: int = 64, height: int = 64, degrade: Degrade = _clean
) -> list[tuple[Scene, Judgement, dict[str, str | int | None]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        image = degrade(render(scene, rng, width, height), rng)
        judgement = judge(image, scene.prompt)
        assert judgement is not None
        out.append((scene, judgement, analyse(image)))
    return out


def _accuracy(
    judged: list[tuple[Scene, Judgement, dict[str, str | int | None]]],
) -> dict[str, float]:
    """Accuracy by attribute over the attributes prompts state, plus "size unsaid": how often a
    shape whose size is not stated (so is medium) is read as medium."""
    right: dict[str, int] = {}
    stated: dict[str, int] = {}
    for scene, j, found in judged:
        for name in j.expected:
            stated[name] = stated.get(name, 0) + 1
            right[name] = right.get(name, 0) + (name in j.right)
        if scene.size is None:
            stated["size unsaid"] = stated.get("size unsaid", 0) + 1
            right["size unsaid"] = right.get("size unsaid", 0) + (found["size"] == "medium")
    return {name: right[name] / stated[name] for name in stated}


def _report(judged: list[tuple[Scene, Judgement, dict[str, str | int | None]]]) -> str:
    wrong = [(j.prompt, j.found) for _, j, _ in judged if j.score < 1][:5]
    return f"accuracy by attribute: {_accuracy(judged)}; some misjudged: {wrong}"


@pytest.mark.parametrize(("width", "height"), [(64, 64), (96, 64), (128, 128)])
def test_clean_renders_are_judged_right(width: int, height: int) -> None:
    judged = _judged(500, seed=11, width=width, height=height)
    accuracy = _accuracy(judged)
    assert set(accuracy) == {*ATTRIBUTES, "size unsaid"}  # every kind was tested
    assert adherence(j for _, j, _ in judged) >= 0.99, _report(judged)
    assert min(accuracy.values()) >= 0.98, _report(judged)


@pytest.mark.parametrize(
    "degrade",
    [_blur, _noise, _shift, _all_three],
    ids=["blur 1.5", "noise 15", "cast 20", "all three"],
)
def test_degraded_renders_are_judged_nearly_right(degrade: Degrade) -> None:
    judged = _judged(300, seed=12, degrade=degrade)
    assert adherence(j for _, j, _ in judged) >= 0.9, _report(judged)
    assert min(_accuracy(judged).values()) >= 0.9, _report(judged)


def test_a_wrong_prompt_scores_low_and_found_says_what_is_there() -> None:
    scene = parse_prompt("a red circle on a blue background")
    assert scene is not None
    image = render(scene, np.random.default_rng(0))

    right = judge(image, scene.prompt)
    wrong = judge(image, "two green squares on a white background")

    assert right is not None and right.score == 1.0
    assert wrong is not None
    assert wrong.expected == {
        "background": "white",
        "colour": "green",
        "shape": "square",
        "count": 2,
    }
    assert wrong.found == {"background": "blue", "colour": "red", "shape": "circle", "count": 1}
    assert wrong.right == ()
    assert wrong.score == 0.0


def test_a_prompt_only_partly_right_scores_in_between() -> None:
    scene = Scene("black", "yellow", "triangle", 1, "large", "at the bottom right")
    image = render(scene, np.random.default_rng(1))

    j = judge(image, "a large yellow square at the top right on a black background")

    assert j is not None
    assert j.right == ("background", "colour", "count", "size")
    assert j.found["shape"] == "triangle"
    assert j.found["position"] == "at the bottom right"
    assert j.score == pytest.approx(4 / 6)


def test_prompts_outside_the_grammar_are_not_judged() -> None:
    image = render(Scene("white", "black", "square"), np.random.default_rng(0))
    assert judge(image, "a lighthouse at dawn") is None
    assert judge(image, "a red circle on a red background") is None  # not a valid scene


def test_scores_are_fractions_of_stated_attributes() -> None:
    judged = _judged(40, seed=13, degrade=_all_three)
    rng = np.random.default_rng(14)
    for scene, j, _ in judged:
        other = sample_scene(rng)
        for judgement in (j, judge(render(scene, rng), other.prompt)):
            assert judgement is not None
            assert 0.0 <= judgement.score <= 1.0
            assert judgement.score == len(judgement.right) / len(judgement.expected)
            assert set(judgement.found) == set(judgement.expected)


def test_adherence_is_a_micro_average() -> None:
    half = Judgement("p", {"a": 1, "b": 2, "c": 3, "d": 4}, {"a": 1, "b": 2, "c": 0, "d": None})
    full = Judgement("q", dict.fromkeys("abcdef", 1), dict.fromkeys("abcdef", 1))
    assert half.score == 0.5
    assert adherence([half, full]) == pytest.approx(8 / 10)  # not (0.5 + 1) / 2
    with pytest.raises(ValueError):
        adherence([])


def test_analyse_reports_every_attribute_in_the_scenes_vocabulary() -> None:
    for scene, _, found in _judged(60, seed=15):
        assert tuple(found) == ATTRIBUTES
        assert found["background"] in COLOURS and found["colour"] in COLOURS
        assert found["shape"] in SHAPES
        assert found["count"] in (1, 2, 3)
        assert found["size"] in SIZES
        assert found["position"] in POSITIONS
        if scene.position is None and scene.count == 1:
            assert found["position"] is not None  # reported even when not asked


def test_image_mode_does_not_matter() -> None:
    rng = np.random.default_rng(16)
    for _ in range(10):
        image = render(sample_scene(rng), rng)
        assert analyse(image.convert("RGBA")) == analyse(image)


def test_a_plain_image_has_no_shape() -> None:
    found = analyse(Image.new("RGB", (64, 64), COLOURS["green"]))
    assert found == {
        "background": "green",
        "colour": None,
        "shape": None,
        "count": 0,
        "size": None,
        "position": None,
    }


def test_specks_are_not_counted() -> None:
    scene = Scene("white", "blue", "circle", 2, "small")
    rng = np.random.default_rng(17)
    pixels = np.array(render(scene, rng))
    for y, x in [(3, 30), (60, 5), (32, 61), (45, 45), (20, 20)]:
        pixels[y, x] = COLOURS["blue"]
    found = analyse(Image.fromarray(pixels))
    assert found["count"] == 2
    assert found["shape"] == "circle"


def test_a_blob_much_smaller_than_the_shape_is_not_counted() -> None:
    scene = Scene("black", "white", "circle", 1, "large", "on the left")
    pixels = np.array(render(scene, np.random.default_rng(18)))
    pixels[40:45, 50:55] = COLOURS["white"]  # bigger than a speck, far smaller than the shape
    found = analyse(Image.fromarray(pixels))
    assert found["count"] == 1
    assert found["position"] == "on the left"


@pytest.mark.parametrize("radius", [2.5, 3.0])
def test_small_blurred_shapes_are_named_by_their_colour_not_its_blend(radius: float) -> None:
    # Blurred, a small blue triangle on yellow is grey at its purest: nearer white than blue.
    rng = np.random.default_rng(19)
    misnamed = []
    for background in COLOURS:
        for colour in COLOURS:
            if colour != background:
                image = render(Scene(background, colour, "triangle", 2, "small"), rng)
                found = analyse(image.filter(ImageFilter.GaussianBlur(radius)))
                if (found["background"], found["colour"]) != (background, colour):
                    misnamed.append((colour, background, found["colour"]))
    assert misnamed == []


def test_held_out_prompts_are_sixty_distinct_scenes_covering_the_vocabulary() -> None:
    assert len(HELD_OUT_PROMPTS) == 60
    assert len(set(HELD_OUT_PROMPTS)) == 60
    scenes = [parse_prompt(p) for p in HELD_OUT_PROMPTS]
    assert all(
        s is not None and s.prompt == p for s, p in zip(scenes, HELD_OUT_PROMPTS, strict=True)
    )
    assert tuple(s.prompt for s in held_out_scenes()) == HELD_OUT_PROMPTS
    assert held_out_scenes() == held_out_scenes()
    assert held_out_scenes(20) == held_out_scenes()[:20]

    held = held_out_scenes()
    assert {s.background for s in held} == set(COLOURS)
    assert {s.colour for s in held} == set(COLOURS)
    assert {s.shape for s in held} == set(SHAPES)
    assert {s.count for s in held} == {1, 2, 3}
    assert {s.size for s in held} == {None, "small", "large"}
    assert len({s.position for s in held} - {None}) >= 5
