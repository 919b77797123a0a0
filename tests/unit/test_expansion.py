"""Manifest expansion: alternatives, wildcards, grid columns, presets and per-row folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.errors import ManifestError
from orchestrator.manifest import Defaults, derived_seed, load_manifest, parse_manifest
from orchestrator.presets import PRESETS, nearest_mixed
from tests.conftest import fixed_size, manifest_of


def errors_of(text: str, **kw: object) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "jobs.csv", native_size=fixed_size, **kw)  # type: ignore[arg-type]
    return [str(i) for i in info.value.issues]


def test_alternatives_expand_as_a_grid_and_share_the_rows_seed() -> None:
    m = manifest_of("prompt\na {red|green} {car|bike}\n")
    assert [j.prompt for j in m.jobs] == ["a red car", "a red bike", "a green car", "a green bike"]
    assert [(j.extra["var_prompt_1"], j.extra["var_prompt_2"]) for j in m.jobs] == [
        ("red", "car"),
        ("red", "bike"),
        ("green", "car"),
        ("green", "bike"),
    ]
    assert {j.seed for j in m.jobs} == {derived_seed("a {red|green} {car|bike}", "")}
    assert len({j.fingerprint() for j in m.jobs}) == 4


def test_braces_without_alternatives_are_left_as_written() -> None:
    (job,) = manifest_of("prompt\na {single} thing {}\n").jobs
    assert job.prompt == "a {single} thing {}"
    assert job.extra == {}


def test_wildcards_read_a_file_of_lines_beside_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "color.txt").write_text("# colours\ncrimson\n\n  teal  \n")
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "animal.txt").write_text("fox\nowl\n")
    path = tmp_path / "jobs.csv"
    path.write_text("prompt,negative_prompt\na __color__ __animal__,__color__ blur\n")
    m = load_manifest(path, native_size=fixed_size)
    assert len(m.jobs) == 2 * 2 * 2
    first = m.jobs[0]
    assert (first.prompt, first.negative_prompt) == ("a crimson fox", "crimson blur")
    assert first.extra == {
        "var_color": "crimson",
        "var_animal": "fox",
        "var_negative_color": "crimson",
    }
    assert {j.prompt for j in m.jobs} == {
        "a crimson fox",
        "a crimson owl",
        "a teal fox",
        "a teal owl",
    }


def test_a_missing_wildcard_file_is_named_at_its_row(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("prompt\nok\na __nothing__\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path, native_size=fixed_size)
    (issue,) = info.value.issues
    assert (issue.line, issue.column) == (3, "prompt")
    assert "wildcard __nothing__ has no file" in issue.message
    assert str(tmp_path / "nothing.txt") in issue.message


def test_list_and_range_columns_expand_as_a_grid_and_record_their_variant() -> None:
    m = manifest_of("prompt,steps,scheduler,seed\nfox,40|50,dpmpp_2m|pndm,1-8\n")
    assert len(m.jobs) == 2 * 2 * 8
    combos = {(j.steps, j.scheduler, j.seed) for j in m.jobs}
    assert len(combos) == 32
    job = next(j for j in m.jobs if (j.steps, j.scheduler, j.seed) == (50, "pndm", 3))
    assert job.extra == {"var_steps": "50", "var_scheduler": "pndm", "var_seed": "3"}


def test_a_grid_column_with_one_value_records_no_variant() -> None:
    (job,) = manifest_of("prompt,steps\nfox,30\n").jobs
    assert job.extra == {}


def test_bad_grid_values_are_named_with_the_cell() -> None:
    text = (
        "prompt,steps,seed,scheduler,guidance_scale\n"
        "a,20||50,8-1,pndm|pndm,7|x\n"
        "b,20|600,1-2,dpmpp_2m|nope,5\n"
    )
    assert errors_of(text) == [
        "jobs.csv:2: column 'steps': has an empty value in its list (values go 'a|b|c') (got '20||50')",
        "jobs.csv:2: column 'seed': is a range that runs backwards (8 > 1) (got '8-1')",
        "jobs.csv:2: column 'scheduler': lists 'pndm' twice (got 'pndm|pndm')",
        "jobs.csv:2: column 'guidance_scale': must be a number (got 'x')",
        "jobs.csv:3: column 'steps': must be between 1 and 500 (got '600')",
        "jobs.csv:3: column 'scheduler': must be one of dpmpp_2m, dpmpp_2m_karras, pndm, euler, euler_a, ddim, flow_euler, unipc (got 'nope')",
    ]


def test_an_absurd_grid_is_counted_and_refused_before_it_is_built() -> None:
    # 4,294,967,296 seeds x 3 alternatives: building it would exhaust memory; counting does not
    text = "prompt,seed\na {b|c|d},0-4294967295\n"
    (error,) = errors_of(text)
    assert "past 1,000,000 jobs (this row: 12,884,901,888 = 3 x 4294967296;" in error
    assert errors_of("prompt,seed\na,1-20\n", max_jobs=10) == [
        "jobs.csv:2: expands the manifest past 10 jobs (this row: 20 = 20; the limit of one "
        "submit; --max-total-jobs raises it)"
    ]


def test_variant_names_are_kept_for_the_grid() -> None:
    assert errors_of("prompt,var_steps\na,1\n", extra_columns=["var_steps"]) == [
        "jobs.csv:1: column 'var_steps': 'var_*' names are kept for grid variants"
    ]


def test_a_rows_preset_sets_what_its_columns_leave_out() -> None:
    m = manifest_of("prompt,preset,steps\nfox,realtime,\nowl,pro,40\nbee,,\n")
    fox, owl, bee = m.jobs
    assert (fox.scheduler, fox.steps, fox.quantization) == ("dpmpp_2m", 15, "4bit")
    assert (owl.scheduler, owl.steps, owl.quantization) == ("pndm", 40, "fp16")
    assert (fox.extra, owl.extra) == ({"preset": "realtime"}, {"preset": "pro"})
    assert (bee.steps, bee.quantization, bee.extra) == (Defaults().steps, "fp16", {})


def test_a_flag_preset_yields_to_given_flags_and_to_a_rows_preset() -> None:
    defaults = Defaults(steps=40).with_preset("pro", keep=["steps"])
    assert (defaults.scheduler, defaults.steps, defaults.quantization) == ("pndm", 40, "fp16")
    a, b = manifest_of("prompt,preset\nfox,\nowl,mobile\n", defaults).jobs
    assert (a.scheduler, a.steps, a.extra) == ("pndm", 40, {"preset": "pro"})
    assert (b.scheduler, b.steps, b.quantization) == ("dpmpp_2m", 20, "6bit")


def test_presets_expand_as_a_grid_axis() -> None:
    m = manifest_of("prompt,preset\nfox,realtime|pro\n")
    assert [(j.steps, j.extra) for j in m.jobs] == [
        (15, {"var_preset": "realtime", "preset": "realtime"}),
        (50, {"var_preset": "pro", "preset": "pro"}),
    ]


def test_mixed_resolves_to_the_registered_variant_nearest_45_bits() -> None:
    names = {
        "sd": [
            "recipe_3.37_bit_mixedpalette",
            "recipe_4.62_bit_mixedpalette",
            "recipe_6.44_bit_mixedpalette",
        ]
    }
    assert nearest_mixed("sd", lambda m: names.get(m, [])) == "recipe_4.62_bit_mixedpalette"

    def mixed(model: str) -> str:
        return nearest_mixed(model, lambda m: names.get(m, []))

    m = parse_manifest(
        "prompt,model,preset\nfox,sd,batch\n", "j.csv", native_size=fixed_size, mixed_variant=mixed
    )
    (job,) = m.jobs
    assert (job.quantization, job.steps, job.scheduler) == (
        "recipe_4.62_bit_mixedpalette",
        PRESETS["batch"].steps,
        "dpmpp_2m",
    )
    (error,) = errors_of("prompt,preset\nfox,batch\n", mixed_variant=mixed)
    assert error.startswith("jobs.csv:2: column 'preset': 'mixed' needs a mixed-bit recipe")
    assert "orchestrate model compress" in error


def test_output_dir_is_checked_and_kept() -> None:
    (job,) = manifest_of("prompt,output_dir\nfox,portraits/{scheduler}/\n").jobs
    assert job.output_dir == "portraits/{scheduler}"
    bad = "prompt,output_dir\na,../up\nb,/abs\nc,x/.hidden\nd,{nope}\n"
    starts = [
        "must be folder names",
        "must be a folder relative",
        "must be folder",
        "unknown field",
    ]
    errors = [e.split(": ", 2)[2] for e in errors_of(bad)]
    assert len(errors) == len(starts)
    assert all(e.startswith(s) for e, s in zip(errors, starts, strict=True)), errors


def test_one_image_takes_its_prompt_as_written() -> None:
    from orchestrator.generate import one_job

    job = one_job("a {red|blue} __fox__", Defaults(), negative_prompt="{x|y}")
    assert (job["prompt"], job["negative_prompt"]) == ("a {red|blue} __fox__", "{x|y}")


@pytest.mark.parametrize("template", ["}{", "x}{", "{seed}}{", "{seed.__class__}", "{0}", "{}"])
def test_templates_that_would_break_at_delivery_are_refused_at_submit(template: str) -> None:
    for column in ("output_name", "output_dir"):
        (error,) = errors_of(f"prompt,{column}\na,{template}\n")
        assert f"column '{column}'" in error


def test_names_are_limited_in_bytes_not_characters(tmp_path: Path) -> None:
    (error,) = errors_of("prompt,output_dir\na," + "猫" * 60 + "\n")
    assert "longer than 150 bytes" in error
    from orchestrator.output import image_path

    job = {"id": 1, "batch_id": 1, "seed": 1, "image_index": 0, "line": 2, "steps": 2}
    job |= {"scheduler": "pndm", "width": 64, "height": 64, "output_dir": "猫" * 200}
    path = image_path(tmp_path, {**job, "output_name": "猫" * 200})  # a hand-edited database
    assert all(len(part.encode()) <= 170 for part in path.relative_to(tmp_path).parts)


def test_expanded_prompts_are_checked_like_written_ones(tmp_path: Path) -> None:
    (tmp_path / "long.txt").write_text("x" * 6000 + "\n")
    (tmp_path / "twice.txt").write_text("a\nb\na\n")
    path = tmp_path / "jobs.csv"
    path.write_text("prompt\n__long__ __long__\n{|x}\n{a|a}\n__twice__\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path, native_size=fixed_size)
    assert [(i.line, i.message[:30]) for i in info.value.issues] == [
        (2, "expands to a prompt over 10000"),
        (3, "expands to '', which is empty"),
        (4, "{a|a} lists 'a' twice"),
        (5, f"wildcard file {tmp_path}"[:30]),
    ]


def test_absurd_numbers_are_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    (error,) = errors_of("prompt,seed\na," + "1" * 5000 + "-2\n")
    assert "column 'seed'" in error
    # 1,000 ** 1,600: a number of 4,800 digits, past what Python will print
    (tmp_path / "w.txt").write_text("".join(f"w{i}\n" for i in range(1000)))
    path = tmp_path / "jobs.csv"
    path.write_text("prompt\n" + "__w__ " * 1600 + "\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path, native_size=fixed_size)
    (issue,) = info.value.issues
    assert "more than 10^30" in issue.message and "x ..." in issue.message


def test_a_wildcard_named_like_a_grid_column_keeps_its_own_variant(tmp_path: Path) -> None:
    (tmp_path / "seed.txt").write_text("one\ntwo\n")
    path = tmp_path / "jobs.csv"
    path.write_text("prompt,seed\na __seed__,1|2\n")
    jobs = load_manifest(path, native_size=fixed_size).jobs
    assert {(j.extra["var_seed"], j.extra["var_seed_2"]) for j in jobs} == {
        ("1", "one"),
        ("1", "two"),
        ("2", "one"),
        ("2", "two"),
    }


def test_too_many_metadata_entries_are_refused_before_a_worker_would() -> None:
    from contract.limits import MAX_EXTRA  # what a worker's payload check allows, too

    header = ",".join(f"meta_{i}" for i in range(MAX_EXTRA))
    (error,) = errors_of(f"prompt,steps,{header}\na,1|2,{','.join('x' * MAX_EXTRA)}\n")
    assert f"{MAX_EXTRA + 1} metadata entries" in error
