"""The ``orchestrate`` command end to end, as a user runs it."""

from __future__ import annotations

import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import Cli, write
from workers.metadata import read_png_metadata

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)


@pytest.mark.subprocess
def test_example_manifest_end_to_end(cli: Cli, tmp_path: Path) -> None:
    manifest = tmp_path / "jobs.csv"
    shutil.copy(REPO / "jobs.example.csv", manifest)
    run = cli("run", "jobs.csv")
    assert run.stdout.splitlines()[0] == "batch 1: 8 rows, 11 jobs added, 0 duplicates"
    assert "11/11 succeeded, 0 failed, 0 cancelled" in run.stdout
    pngs = sorted((tmp_path / "output" / "1").glob("*.png"))
    assert len(pngs) == 11
    assert not list((tmp_path / "output").rglob("*.tmp"))

    # README command 1's last step: the judge reads each image's prompt from its PNG
    judged = cli.json("judge", "output/1")
    assert judged["judged"] == 11 and len(judged["images"]) == 11
    assert all(0 <= row["score"] <= 1 for row in judged["images"])
    assert judged["adherence"] >= 0.4, judged  # chance is about 0.25; see README
    # as text; against a prompt the images do not show, under the bar: exit 1
    wrong = cli(
        "judge",
        "output/1",
        "--prompt",
        "three black triangles on a white background",
        "--min-adherence",
        "0.9",
        check=1,
    )
    assert wrong.stdout.startswith("output/1/") and "adherence 0." in wrong.stdout
    other = cli("judge", "output/1", "--prompt", "a lighthouse at dawn").stdout
    assert "not in the scenes world" in other and "no image judged" in other

    status = cli.json("status")
    assert status["counts"]["succeeded"] == 11 and status["total"] == 11
    assert status["timings"]["n"] == 11
    for key in ("queue_wait_s", "text_encode_s", "denoise_s", "decode_s", "total_s", "peak_mem_mb"):
        assert status["timings"][key] > 0, key

    # the timings are columns a user can query in plain SQL
    with closing(sqlite3.connect(tmp_path / "orchestrate.db")) as db:
        n, denoise = db.execute(
            "SELECT count(*), sum(denoise_s) FROM attempts WHERE status = 'succeeded'"
        ).fetchone()
    assert n == 11 and denoise > 0

    meta = read_png_metadata((tmp_path / "output" / "1" / "000003.png").read_bytes())
    assert meta["parameters"].startswith(
        "two small yellow squares on a black background\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 64x64"
    )

    # the same manifest again: nothing new, and nothing left to do
    again = cli("run", "jobs.csv")
    assert again.stdout.splitlines()[0] == "no new batch: 8 rows, 0 jobs added, 11 duplicates"
    assert "11/11 succeeded" in again.stdout


def test_bad_manifest_is_rejected_whole(cli: Cli, tmp_path: Path) -> None:
    write(
        tmp_path / "bad.csv",
        "prompt,steps,width,scheduler\nfine,20,64,dpmpp_2m\n,0,65,dpmpp_2m\nok,20,64,plms\n",
    )
    proc = cli("submit", "bad.csv", check=2)
    assert proc.stderr.splitlines() == [
        "error: bad.csv:3: column 'prompt': must not be empty (got '')",
        "error: bad.csv:3: column 'steps': must be between 1 and 500 (got '0')",
        "error: bad.csv:3: column 'width': must be a multiple of 8 (Stable Diffusion's VAE scale) (got '65')",
        "error: bad.csv:4: column 'scheduler': must be one of dpmpp_2m, dpmpp_2m_karras, pndm, euler, euler_a, ddim, flow_euler, unipc (got 'plms')",
        "4 errors in the manifest; nothing was submitted",
    ]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "orchestrate.db").exists()  # nothing at all was written


def test_submit_then_work_then_inspect_jobs(cli: Cli, tmp_path: Path) -> None:
    write(
        tmp_path / "j.csv", "prompt,seed,steps,num_images,priority\na cat,1,2,3,0\nurgent,9,2,1,5\n"
    )
    out = cli("submit", "j.csv", "--json")
    assert out.stdout.strip() == '{"batch_id": 1, "rows": 2, "added": 4, "duplicates": 0}'
    assert cli("jobs", "cancel", "2").stdout.strip() == "1 jobs cancelled"
    cli("work", "--local", "--burst")
    listing = cli("jobs", "list").stdout.splitlines()
    assert listing[0].split() == [
        "id",
        "batch",
        "status",
        "try",
        "seed",
        "steps",
        "scheduler",
        "prompt",
    ]
    assert [line.split()[2] for line in listing[1:]] == [
        "succeeded",
        "cancelled",
        "succeeded",
        "succeeded",
    ]
    shown = cli("jobs", "show", "4").stdout
    assert "attempt 1: succeeded on" in shown and "denoise" in shown
    # times as people read them, not UNIX seconds
    assert re.search(r"finished_at: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n", shown), shown
    # a listing cut short says so
    short = cli("jobs", "list", "--limit", "2")
    assert len(short.stdout.splitlines()) == 3 and "there are more" in short.stderr
    assert "there are more" not in cli("jobs", "list").stderr
    # a cancelled job is not a failure of the run
    assert cli("run").returncode == 0
    assert cli("jobs", "retry", "2").stdout.strip() == "1 jobs back in the queue"
    assert cli("run").returncode == 0
    assert cli.json("status")["counts"]["succeeded"] == 4
    missing = cli("jobs", "show", "99", check=2)
    assert missing.stderr.strip() == "error: no job with id 99"


def test_generate_one_image_and_env_configuration(cli: Cli, tmp_path: Path) -> None:
    cli.env["ORCHESTRATE_DB"] = str(tmp_path / "elsewhere.db")
    cli.env["ORCHESTRATE_GENERATE_STEPS"] = "5"
    proc = cli(
        "generate",
        "--prompt",
        "a lighthouse",
        "--scheduler",
        "dpmpp_2m",
        "--seed",
        "7667",
        "--output-path",
        "imgs",
    )
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "imgs" / "7667-a-lighthouse.png"
    # one image needs no database: none is made, named or not
    assert not (tmp_path / "elsewhere.db").exists() and not (tmp_path / "orchestrate.db").exists()
    params = read_png_metadata(path.read_bytes())["parameters"]
    assert params.startswith(
        "a lighthouse\nSteps: 5, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 7667"
    )


def test_help_names_environment_variables(cli: Cli) -> None:
    top = cli("--help").stdout
    assert "ORCHESTRATE_DB" in top and "ORCHESTRATE_OUTPUT" in top
    work = cli("work", "--help").stdout
    assert "ORCHESTRATE_WORK_LEASE" in work and "ORCHESTRATE_WORK_THREADS" in work


def test_unsupported_database_url_is_a_clear_error(cli: Cli) -> None:
    proc = cli("--db", "postgresql://x/y", "status", check=2)
    assert proc.stderr.strip() == (
        "error: only SQLite databases are supported, got 'postgresql' in 'postgresql://x/y'"
    )


def test_submit_warns_once_per_model_whose_licence_limits_its_images(
    cli: Cli, tmp_path: Path
) -> None:
    write(
        tmp_path / "j.csv",
        "prompt,seed,model,num_images\n"
        "a fox,1,black-forest-labs/FLUX.1-dev,2\n"
        "a cat,2,black-forest-labs/FLUX.1-dev,1\n"
        "a dog,3,tiny,1\n",
    )
    proc = cli("submit", "j.csv")
    warnings = [line for line in proc.stderr.splitlines() if "licen" in line.lower()]
    assert warnings == [
        "warning: model 'black-forest-labs/FLUX.1-dev' (3 jobs) is under the FLUX.1 [dev] "
        "Non-Commercial License: its images are not to be used to train, fine-tune or distil a "
        "model that competes with it "
        "(https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md)"
    ]
    shown = cli("jobs", "show", "1").stdout
    assert "         licence: flux-1-dev-non-commercial-license (not to be used to train" in shown
    assert "licence: MIT (built-in, " in cli("jobs", "show", "4").stdout
