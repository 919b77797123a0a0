from __future__ import annotations

import pytest

from contract.errors import ManifestError
from orchestrator.manifest import Defaults, derived_seed, load_manifest, parse_manifest
from tests.conftest import fixed_size, manifest_of


def errors_of(text: str | bytes, **kw: object) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "jobs.csv", native_size=fixed_size, **kw)  # type: ignore[arg-type]
    return [str(i) for i in info.value.issues]


def test_minimal_manifest_takes_defaults_for_every_missing_column() -> None:
    m = manifest_of("prompt\na cat\n")
    assert m.rows == 1
    (job,) = m.jobs
    d = Defaults()
    assert (job.prompt, job.steps, job.guidance_scale, job.scheduler, job.model) == (
        "a cat",
        d.steps,
        d.guidance_scale,
        d.scheduler,
        d.model,
    )
    assert (job.width, job.height) == (64, 64)  # the model's native size
    assert job.seed == derived_seed("a cat", "")
    assert job.line == 2


def test_num_images_expands_to_consecutive_seeds() -> None:
    m = manifest_of("prompt,seed,num_images\nx,10,3\n")
    assert [j.seed for j in m.jobs] == [10, 11, 12]
    assert [j.image_index for j in m.jobs] == [0, 1, 2]
    assert len({j.fingerprint() for j in m.jobs}) == 3


def test_commas_quotes_newlines_and_unicode_round_trip() -> None:
    text = 'prompt,negative_prompt\n"a fox, in ""snow""\nsecond line",京都の夜\n'
    (job,) = manifest_of(text).jobs
    assert job.prompt == 'a fox, in "snow"\nsecond line'
    assert job.negative_prompt == "京都の夜"
    assert job.line == 2


def test_excel_bom_and_crlf_are_accepted() -> None:
    data = "\ufeffprompt,Steps\r\na cat,30\r\na dog,31\r\n".encode()
    m = parse_manifest(data, "excel.csv", native_size=fixed_size)
    assert [(j.prompt, j.steps, j.line) for j in m.jobs] == [("a cat", 30, 2), ("a dog", 31, 3)]


def test_multiline_rows_keep_their_starting_line_numbers() -> None:
    text = 'prompt,steps\n"one\ntwo\nthree",20\nnext,0\n'
    assert errors_of(text) == ["jobs.csv:5: column 'steps': must be between 1 and 500 (got '0')"]


def test_every_error_is_collected_with_line_column_and_value() -> None:
    text = (
        "prompt,seed,steps,guidance_scale,width,height,scheduler,num_images,output_name\n"
        "ok,1,20,7.5,64,64,dpmpp_2m,1,\n"
        ",-1,0,nan,65,8,dpmpp2m,0,../etc/passwd\n"
        "fine,4294967296,abc,51,4096,64,PNDM,1,{bogus}\n"
    )
    assert errors_of(text) == [
        "jobs.csv:3: column 'prompt': must not be empty (got '')",
        "jobs.csv:3: column 'seed': must be between 0 and 4294967295; leave it empty for a seed derived from the prompt (got '-1')",
        "jobs.csv:3: column 'steps': must be between 1 and 500 (got '0')",
        "jobs.csv:3: column 'guidance_scale': must be between 0 and 50 (got 'nan')",
        "jobs.csv:3: column 'width': must be a multiple of 8 (Stable Diffusion's VAE scale) (got '65')",
        "jobs.csv:3: column 'height': must be between 64 and 4096 (got '8')",
        "jobs.csv:3: column 'scheduler': must be one of dpmpp_2m, dpmpp_2m_karras, pndm, euler, euler_a, ddim, flow_euler, unipc; did you mean 'dpmpp_2m'? (got 'dpmpp2m')",
        "jobs.csv:3: column 'num_images': must be between 1 and 10000 (got '0')",
        "jobs.csv:3: column 'output_name': must be a plain file name (letters, digits, space, '_', '-', '.', {fields}); no '/', '\\', '..' or leading '.' (got '../etc/passwd')",
        "jobs.csv:4: column 'seed': must be between 0 and 4294967295; leave it empty for a seed derived from the prompt (got '4294967296')",
        "jobs.csv:4: column 'steps': must be a whole number (got 'abc')",
        "jobs.csv:4: column 'guidance_scale': must be between 0 and 50 (got '51')",
        "jobs.csv:4: column 'output_name': unknown field {bogus}; known: {seed}, {index}, {line}, {steps}, {scheduler}, {width}, {height}, {guidance_scale}, {quantization} (got '{bogus}')",
    ]


def test_scheduler_names_are_case_insensitive() -> None:
    (job,) = manifest_of("prompt,scheduler,steps\nx,PNDM,50\n").jobs
    assert job.scheduler == "pndm"


def test_a_sampler_that_draws_noise_on_the_tiny_model_at_those_steps_is_refused() -> None:
    """pndm at 20 steps on the built-in tiny model: refused at its row, with the way out; a
    grid with one such cell is refused whole; from flags, the line alone is named."""
    why = (
        "pndm at 20 steps draws noise, not pictures, on the built-in tiny model (PLMS diverges "
        "on its zero-terminal-SNR schedule below 40 steps): give it steps 40 or more, or use "
        "dpmpp_2m"
    )
    assert errors_of("prompt,scheduler,steps\nx,pndm,50\ny,pndm,20\nz,dpmpp_2m|pndm,20|40\n") == [
        f"jobs.csv:3: column 'scheduler': {why} (got 'pndm')",
        f"jobs.csv:4: column 'scheduler': {why} (got 'dpmpp_2m|pndm')",
    ]
    assert errors_of("prompt,steps\nx,20\n", defaults=Defaults(scheduler="pndm")) == [
        f"jobs.csv:2: column 'steps': {why} (got '20')"
    ]
    assert errors_of("prompt\nx\n", defaults=Defaults(scheduler="pndm")) == [f"jobs.csv:2: {why}"]
    (job,) = manifest_of("prompt,scheduler\nx,pndm\n", Defaults(steps=40)).jobs
    assert (job.scheduler, job.steps) == ("pndm", 40)


def test_unknown_columns_are_rejected_with_a_suggestion() -> None:
    assert errors_of("prompt,negativ_prompt,color\nx,y,z\n") == [
        "jobs.csv:1: column 'negativ_prompt': is not a known column; did you mean 'negative_prompt'? (extra metadata columns start with 'meta_' or are declared with --extra-column)",
        "jobs.csv:1: column 'color': is not a known column (extra metadata columns start with 'meta_' or are declared with --extra-column)",
    ]


def test_extra_metadata_columns_are_kept() -> None:
    m = parse_manifest(
        "prompt,meta_split,color\nx,train,red\n",
        "jobs.csv",
        extra_columns=["color"],
        native_size=fixed_size,
    )
    assert m.jobs[0].extra == {"meta_split": "train", "color": "red"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "jobs.csv:1: is empty; it needs a header row"),
        ("prompt\n", "jobs.csv:2: has a header but no rows"),
        ("seed\n1\n", "jobs.csv:1: header has no 'prompt' column"),
        ("prompt,prompt\nx,y\n", "jobs.csv:1: column 'prompt': appears twice in the header"),
        ('prompt\n"unterminated\n', "jobs.csv:2: is not valid CSV: unexpected end of data"),
        ("prompt\na,b\n", "jobs.csv:2: has 2 fields but the header has 1 (unquoted comma?)"),
    ],
)
def test_structural_errors(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_invalid_utf8_names_the_line_and_byte() -> None:
    data = b"prompt\nok\nbad \xff here\n"
    assert errors_of(data) == [
        "jobs.csv:3: is not UTF-8 (byte 0xff at offset 14); save the CSV as 'CSV UTF-8'"
    ]


def test_trailing_empty_fields_from_spreadsheets_are_ignored() -> None:
    (job,) = manifest_of("prompt,steps\nx,12,,\n").jobs
    assert job.steps == 12


def test_seed_plus_num_images_must_stay_in_range() -> None:
    assert errors_of("prompt,seed,num_images\nx,4294967295,2\n") == [
        "jobs.csv:2: column 'num_images': seed 4294967295 + num_images passes 4294967295 (got '2')"
    ]


def test_fingerprint_ignores_bookkeeping_but_not_pixels() -> None:
    a = manifest_of("prompt,seed,priority,tags\nx,1,0,a\n").jobs[0]
    b = manifest_of("prompt,seed,priority,tags\nx,1,9,b\n").jobs[0]
    c = manifest_of("prompt,seed\nx,2\n").jobs[0]
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_missing_file_is_a_manifest_error(tmp_path: object) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest("/nonexistent/jobs.csv")
    assert (
        str(info.value.issues[0])
        == "/nonexistent/jobs.csv:0: cannot be read: No such file or directory"
    )


def test_example_manifest_is_valid() -> None:
    from tests.conftest import REPO

    m = load_manifest(REPO / "jobs.example.csv")
    assert m.rows == 8
    assert len(m.jobs) == 11
    assert {j.scheduler for j in m.jobs} >= {"dpmpp_2m", "dpmpp_2m_karras", "pndm", "euler", "ddim"}
