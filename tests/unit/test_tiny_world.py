"""The tiny model's world, said once: the README's grammar is the parser's, and `submit` warns
about prompts for `tiny` outside it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from orchestrator.preflight import tiny_world_warning
from tests.conftest import manifest_of
from workers.tiny.scenes import COLOURS, GRAMMAR, POSITIONS, SHAPES, parse_prompt, prompt_problem

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_shows_the_grammar_the_parser_reads() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The built-in tiny model") :]
    assert f"```\n{GRAMMAR}\n```" in section[: section.index("\n## ")]


def test_the_grammar_is_exactly_what_parses() -> None:
    # every prompt of the loose form the README used to show, accepted exactly when the
    # grammar says so: one shape without "s", several with; large and a position only alone
    counts = {"a": 1, "two": 2, "three": 3}
    for count, size, colour, background, shape, plural, position in itertools.product(
        counts, ("", "small ", "large "), COLOURS, COLOURS, SHAPES, ("", "s"), ("", *POSITIONS)
    ):
        n = counts[count]
        where = f" {position}" if position else ""
        prompt = f"{count} {size}{colour} {shape}{plural}{where} on a {background} background"
        allowed = (
            (n == 1) == (plural == "")
            and colour != background
            and (n == 1 or (size != "large " and not position))
        )
        assert (parse_prompt(prompt) is not None) == allowed, prompt
        assert (prompt_problem(prompt) is None) == allowed, prompt


@pytest.mark.parametrize(
    ("prompt", "why"),
    [
        ("two large red squares on a blue background", "only one large shape fits"),
        ("a red squares on a blue background", "'a' goes with 'square'"),
        ("three red circle on a blue background", "'three' goes with 'circles'"),
        ("a purple circle on a blue background", "'purple' is not a word of its world"),
        ("a red circle on a red background", "shape and background are both red"),
        (
            "two red circles at the top on a blue background",
            "position 'at the top' needs one shape and a known place",
        ),
        ("blue background with a red circle", "'with' is not a word of its world"),
        ("red a circle on a blue background", "its words are not in the grammar's order"),
    ],
)
def test_a_prompt_outside_the_world_says_why(prompt: str, why: str) -> None:
    assert prompt_problem(prompt) == why


def test_submit_warns_once_naming_the_lines_of_tiny_prompts_outside_the_world() -> None:
    m = manifest_of(
        "prompt,model,num_images\n"
        "two large red squares on a blue background,tiny,2\n"
        "a red circle on a blue background,tiny,1\n"
        '"a {red|purple} circle on a blue background",tiny,1\n'
        "a lighthouse at dusk,me/sd15,1\n"  # another model: its own world
        "A  Red circle on an blue background.,,1\n"  # read as the grammar says
    )
    assert tiny_world_warning(m) == (
        "test.csv: 2 lines (2, 4) give the built-in tiny model prompts outside the world it "
        "draws (line 2: 'two large red squares on a blue background': only one large shape "
        "fits); they are drawn anyway, and the built-in judge cannot score them (the grammar: "
        'README, "The built-in tiny model")'
    )
    many = manifest_of("prompt\n" + "a dog\n" * 12)
    assert tiny_world_warning(many) == (
        "test.csv: 12 lines (2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 2 more) give the built-in tiny "
        "model prompts outside the world it draws (line 2: 'a dog': 'dog' is not a word of its "
        "world); they are drawn anyway, and the built-in judge cannot score them "
        '(the grammar: README, "The built-in tiny model")'
    )
    one = manifest_of("prompt\na red circle on a blue background\na dog\n")
    assert tiny_world_warning(one) == (
        "test.csv: line 3 gives the built-in tiny model a prompt outside the world it draws "
        "('a dog': 'dog' is not a word of its world); it is drawn anyway, and the built-in "
        'judge cannot score it (the grammar: README, "The built-in tiny model")'
    )
    assert tiny_world_warning(manifest_of("prompt\na red circle on a blue background\n")) is None
