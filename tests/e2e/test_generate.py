"""``orchestrate generate``: one image where asked, no database; and ``run``'s model check."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import Cli, write
from workers.metadata import read_png_metadata

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)

BATCH_ONLY_FLAGS = (
    "--priority",
    "--max-attempts",
    "--max-total-jobs",
    "--extra-column",
    "--lease",
    "--max-jobs",
)


def pixels(path: Path) -> bytes:
    with Image.open(path) as img:
        return img.convert("RGB").tobytes()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_generate_writes_where_asked_and_nothing_else(cli: Cli, tmp_path: Path) -> None:
    args = ("generate", "a lighthouse, at dusk!", "--steps", "1", "--seed", "7667")
    # a folder (made if missing): <seed>-<slug>.png, said on stdout as the only line
    first = cli(*args, "-o", "imgs")
    expected = tmp_path / "imgs" / "7667-a-lighthouse-at-dusk.png"
    assert first.stdout == f"{expected}\n"
    for word in ("row", "batch", "duplicate", "succeeded"):
        assert word not in first.stdout + first.stderr, first.stderr
    # no database, no ./output, no temporary file: only the image
    assert files_under(tmp_path) == ["imgs", "imgs/7667-a-lighthouse-at-dusk.png"]
    meta = read_png_metadata(expected.read_bytes())
    assert meta["parameters"].startswith(
        "a lighthouse, at dusk!\nSteps: 1, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 7667"
    )
    assert meta["meta"]["job"]["seed"] == 7667 and meta["meta"]["run"]["backend"] == "diffusers"
    # the same again does not replace it
    again = cli(*args, "-o", "imgs")
    assert again.stdout == f"{tmp_path / 'imgs' / '7667-a-lighthouse-at-dusk-2.png'}\n"
    assert pixels(expected) == pixels(tmp_path / "imgs" / "7667-a-lighthouse-at-dusk-2.png")
    # an exact file name: exactly that file; refused if it exists, unless --overwrite
    exact = cli(*args, "-o", "out/pic.png")
    assert exact.stdout == f"{tmp_path / 'out' / 'pic.png'}\n"
    (tmp_path / "out" / "pic.png").write_bytes(b"mine")
    refused = cli(*args, "-o", "out/pic.png", check=2)
    assert refused.stderr == (
        f"error: {tmp_path / 'out' / 'pic.png'} already exists; --overwrite replaces it\n"
    )
    assert (tmp_path / "out" / "pic.png").read_bytes() == b"mine"
    cli(*args, "-o", "out/pic.png", "--overwrite")
    assert pixels(tmp_path / "out" / "pic.png") == pixels(expected)
    assert not (tmp_path / "orchestrate.db").exists() and not (tmp_path / "output").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    # the image reproduces from its own metadata
    assert cli("reproduce", str(expected)).stdout.endswith("reproduced, pixels identical\n")


def test_generate_help_has_only_one_image_flags(cli: Cli) -> None:
    shown = cli("generate", "--help").stdout
    assert "-o, --output-path" in shown and "--overwrite" in shown and "--seed" in shown
    for flag in BATCH_ONLY_FLAGS:
        assert flag not in shown, flag


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("a prompt", "-o", "pic.jpg"),
            "error: -o pic.jpg: generate writes PNG only; name a .png file or a folder",
        ),
        (
            ("a prompt", "--model", "./models/missing"),
            "error: model './models/missing': no such folder",
        ),
        (("a prompt", "--width", "100"), "error: --width must be a multiple of 8 (got 100)"),
        (("a prompt", "--prompt", "another"), "error: give the prompt once"),
        (("  ",), "error: the prompt is empty"),
    ],
)
def test_generate_mistakes_are_one_line_before_any_work(
    cli: Cli, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    proc = cli("generate", *args, check=2)
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == "" and files_under(tmp_path) == []


# -- run checks the models of its jobs before it starts; submit warns -------------------------


@pytest.mark.subprocess
def test_run_refuses_models_it_cannot_load_and_submit_warns(cli: Cli, tmp_path: Path) -> None:
    cli.env["HF_HUB_OFFLINE"] = "1"
    cli.env["HF_HUB_CACHE"] = str(tmp_path / "hf-cache")  # empty: nothing cached
    manifest = write(
        tmp_path / "jobs.csv",
        "prompt,model,num_images,steps\n"
        "a red circle on a blue background,tiny,1,1\n"
        "gone,./models/sd15,2,1\n"
        "hub,someone/not-cached,1,1\n",
    )
    refused = cli("run", str(manifest), check=2)
    assert refused.stderr.splitlines() == [
        "error: model './models/sd15', 2 jobs: no such folder on this machine "
        f"({tmp_path / 'models' / 'sd15'})",
        "error: model 'someone/not-cached', 1 job: not in this machine's Hugging Face cache, and "
        "the hub cannot be reached (HF_HUB_OFFLINE=1): download it where there is a network "
        "(`hf download someone/not-cached`) or give a local diffusers folder",
        "error: 2 models (3 jobs) cannot be loaded on this machine; nothing was submitted or run "
        "(--skip-model-check runs anyway: those jobs fail)",
    ]
    assert not (tmp_path / "output").exists()
    with closing(sqlite3.connect(tmp_path / "orchestrate.db")) as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)

    # submit refuses the missing folder at its line; asked to (the manifest may be for
    # workers on another machine), it submits with a warning
    refused = cli("submit", str(manifest), check=2)
    assert refused.stderr.splitlines()[0] == (
        f"error: {manifest}:3: column 'model': no such folder on this machine "
        f"({tmp_path / 'models' / 'sd15'}) (got './models/sd15')"
    )
    submitted = cli("submit", "--skip-model-check", str(manifest))
    assert submitted.stderr == (
        "warning: model './models/sd15' (2 jobs) is not a folder on this machine; a worker "
        "that runs these jobs needs it\n"
    )
    # run without a manifest checks the jobs that wait
    waiting = cli("run", check=2)
    assert waiting.stderr.splitlines()[-1] == (
        "error: 2 models (3 jobs) cannot be loaded on this machine; nothing was run. They wait "
        "in batch 1 (jobs.csv): `orchestrate jobs cancel --batch 1` cancels it, `orchestrate "
        "pause --batch 1` keeps it for a machine that has the model; --skip-model-check runs "
        "anyway (those jobs fail)"
    )
    assert cli.json("status")["counts"]["pending"] == 4

    # asked to, it runs: the good job succeeds; the missing folder and the hub id that
    # HF_HUB_OFFLINE keeps from the hub fail at once (a retry cannot help)
    ran = cli("run", "--skip-model-check", check=1)
    assert "1/4 succeeded, 3 failed" in ran.stdout
    with closing(sqlite3.connect(tmp_path / "orchestrate.db")) as db:
        rows = db.execute("SELECT model, status, attempts FROM jobs ORDER BY id").fetchall()
    assert rows == [
        ("tiny", "succeeded", 1),
        ("./models/sd15", "failed", 1),
        ("./models/sd15", "failed", 1),
        ("someone/not-cached", "failed", 1),
    ]
    assert "retrying" not in ran.stderr


def test_compile_on_the_cpu_is_refused_in_one_line(cli: Cli) -> None:
    proc = cli("generate", "a red circle", "--compile", "--device", "cpu", check=2)
    assert "--compile needs a CUDA device, not cpu" in proc.stderr
    assert "Traceback" not in proc.stderr
