"""Choices inside choices: ``{a|{b|c}}``, and wildcard files whose lines hold wildcards and
alternatives of their own. Expanded with a depth limit and loop detection; every error names
the file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.errors import ManifestError
from orchestrator.expansion import MAX_DEPTH
from orchestrator.manifest import load_manifest
from tests.conftest import fixed_size, manifest_of


def files(folder: Path, **texts: str) -> Path:
    """Wildcard files (``name=text``) and a manifest path in ``folder``."""
    for name, text in texts.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder / "jobs.csv"


def jobs_of(path: Path, csv: str) -> list[tuple[str, dict[str, str]]]:
    path.write_text(csv, encoding="utf-8")
    return [(j.prompt, j.extra) for j in load_manifest(path, native_size=fixed_size).jobs]


def errors_of(path: Path, csv: str) -> list[str]:
    path.write_text(csv, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path, native_size=fixed_size)
    return [str(i) for i in info.value.issues]


def test_alternatives_inside_alternatives_are_alternatives_of_the_outer_group() -> None:
    m = manifest_of("prompt\nx {a|{b|c}} {y|z}\n")
    assert [(j.prompt, j.extra) for j in m.jobs] == [
        ("x a y", {"var_prompt_1": "a", "var_prompt_2": "y"}),
        ("x a z", {"var_prompt_1": "a", "var_prompt_2": "z"}),
        ("x b y", {"var_prompt_1": "b", "var_prompt_2": "y"}),
        ("x b z", {"var_prompt_1": "b", "var_prompt_2": "z"}),
        ("x c y", {"var_prompt_1": "c", "var_prompt_2": "y"}),
        ("x c z", {"var_prompt_1": "c", "var_prompt_2": "z"}),
    ]


def test_braces_for_other_tools_keep_what_is_inside_them_expanding() -> None:
    m = manifest_of("prompt\n{lit {a|b}} {single}\n")
    assert [(j.prompt, j.extra) for j in m.jobs] == [
        ("{lit a} {single}", {"var_prompt_1": "a"}),
        ("{lit b} {single}", {"var_prompt_1": "b"}),
    ]


def test_wildcard_lines_hold_wildcards_and_alternatives_of_their_own(tmp_path: Path) -> None:
    path = files(
        tmp_path,
        animal="# animals\na __colour__ cat\n\n{big|small} owl\n",
        colour="red\n{dark|light} blue\n",
    )
    got = jobs_of(path, "prompt\n__animal__ in {{rain|snow}|fog}\n")
    assert len(got) == (3 + 2) * 3
    assert got[:4] == [
        ("a red cat in rain", {"var_animal": "a red cat", "var_prompt_1": "rain"}),
        ("a red cat in snow", {"var_animal": "a red cat", "var_prompt_1": "snow"}),
        ("a red cat in fog", {"var_animal": "a red cat", "var_prompt_1": "fog"}),
        ("a dark blue cat in rain", {"var_animal": "a dark blue cat", "var_prompt_1": "rain"}),
    ]
    assert {p for p, _ in got} >= {"small owl in fog", "a light blue cat in snow"}
    # a wildcard inside alternatives
    assert [p for p, _ in jobs_of(path, "prompt\n{__colour__|plain} sky\n")] == [
        "red sky",
        "dark blue sky",
        "light blue sky",
        "plain sky",
    ]


def test_a_wildcard_that_uses_itself_is_named_where_the_loop_closes(tmp_path: Path) -> None:
    path = files(tmp_path, a="one\n# b next\n{x|__b__}\n", b="\n__a__ again\n")
    assert errors_of(path, "prompt\n__a__\n") == [
        f"{path}:2: column 'prompt': at {tmp_path / 'b.txt'}:2:1: wildcard __a__ uses itself "
        "(__a__ -> __b__ -> __a__) (got '__a__')"
    ]
    path = files(tmp_path, me="x __me__\n")
    assert errors_of(path, "prompt\n__me__\n") == [
        f"{path}:2: column 'prompt': at {tmp_path / 'me.txt'}:1:3: wildcard __me__ uses itself "
        "(__me__ -> __me__) (got '__me__')"
    ]


def test_choices_nested_too_deep_are_refused_at_the_brace_or_wildcard(tmp_path: Path) -> None:
    deepest = "{a|" * MAX_DEPTH + "z" + "}" * MAX_DEPTH
    assert len(manifest_of(f"prompt\n{deepest}\n").jobs) == MAX_DEPTH + 1
    path = files(tmp_path)
    too_deep = "{a|" * (MAX_DEPTH + 1) + "z" + "}" * (MAX_DEPTH + 1)
    (error,) = errors_of(path, f"prompt\n{too_deep}\n")
    assert error.startswith(
        f"{path}:2: column 'prompt': at character {3 * MAX_DEPTH + 1}: choices nest more than "
        f"{MAX_DEPTH} deep (got "
    )
    # a file deep enough on its own, used one level down: named where it is used
    files(tmp_path, deep=deepest + "\n")
    assert errors_of(path, "prompt\nx {__deep__|y}\n") == [
        f"{path}:2: column 'prompt': at character 4: __deep__ nests choices more than "
        f"{MAX_DEPTH} deep (got 'x {{__deep__|y}}')"
    ]
    # a chain of files deeper than the limit
    names = [f"w{i}" for i in range(MAX_DEPTH + 2)]
    for name, nxt in zip(names, [*names[1:], None], strict=True):
        files(tmp_path, **{name: f"__{nxt}__\n" if nxt else "end\n"})
    (error,) = errors_of(path, "prompt\n__w0__\n")
    assert f"wildcards nest more than {MAX_DEPTH} deep (__w0__ -> __w1__ ->" in error
    assert error.startswith(f"{path}:2: column 'prompt': at {tmp_path / 'w7.txt'}:1:1: ")


def test_errors_inside_a_wildcard_file_name_its_file_line_and_column(tmp_path: Path) -> None:
    path = files(tmp_path, a="# comment\n\nok\nx {y|y}\n", b="fine\nsome __nope__\n")
    assert errors_of(path, "prompt\n__a__\n__b__\n") == [
        f"{path}:2: column 'prompt': at {tmp_path / 'a.txt'}:4:3: {{y|y}} lists 'y' twice "
        "(got '__a__')",
        f"{path}:3: column 'prompt': at {tmp_path / 'b.txt'}:2:6: wildcard __nope__ has no file: "
        f"looked for {tmp_path / 'nope.txt'} and {tmp_path / 'wildcards' / 'nope.txt'} "
        "(got '__b__')",
    ]
    path = files(tmp_path, twice="a\n\nb\na\n")
    assert errors_of(path, "prompt\n__twice__\n") == [
        f"{path}:2: column 'prompt': wildcard file {tmp_path / 'twice.txt'}:4: 'a' is listed "
        "twice (also on line 1) (got '__twice__')"
    ]
    (error,) = errors_of(path, "prompt\nx {a|{b|b}}\n")
    assert (
        error
        == f"{path}:2: column 'prompt': at character 6: {{b|b}} lists 'b' twice (got 'x {{a|{{b|b}}}}')"
    )


def test_nested_sizes_are_counted_before_anything_is_built(tmp_path: Path) -> None:
    # seven files of 1,000 lines, each line naming the next file twice: 10^3 x (10^3)^2 ...
    names = "abcdefg"
    for name, nxt in zip(names, [*names[1:], None], strict=True):
        line = f" __{nxt}__ __{nxt}__" if nxt else ""
        files(tmp_path, **{name: "".join(f"w{i}{line}\n" for i in range(1000))})
    path = files(tmp_path)
    assert errors_of(path, "prompt\n__a__\n") == [
        f"{path}:2: expands the manifest past 1,000,000 jobs (this row: more than 10^30 = "
        "over 10^30; the limit of one submit; --max-total-jobs raises it)"
    ]
    # counted exactly when it fits: 10 lines, each with two wildcards of 10 lines
    files(tmp_path, t="".join(f"t{i}\n" for i in range(10)))
    files(tmp_path, s="".join(f"s{i} __t__ __t__\n" for i in range(10)))
    assert len(jobs_of(path, "prompt\n__s__\n")) == 10 * 10 * 10
