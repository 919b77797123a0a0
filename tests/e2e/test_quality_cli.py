"""The quality gate as a user runs it: ``run --judge CMD`` on the real tiny pipeline, then
``jobs list --below``, ``jobs show``, ``status`` and ``reproduce``; the refusals before any
work; ``generate --judge``."""

from __future__ import annotations

import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.helpers import Cli, write
from workers.metadata import read_png_metadata
from workers.quality import candidate_seed

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)

SCENE = "two small yellow squares on a black background"
# Scores its first image 0.2 and every later one 0.9 (the tiny model's images are noise: the
# judge cannot read them, so it counts).
COUNTING_JUDGE = """\
import sys
from pathlib import Path
from PIL import Image
with Image.open(sys.argv[1]) as im:
    assert im.size == (64, 64)
calls = Path(__file__).with_suffix(".calls")
n = len(calls.read_text().splitlines()) if calls.exists() else 0
calls.write_text((calls.read_text() if calls.exists() else "") + sys.argv[2] + "\\n")
print(0.2 if n == 0 else 0.9)
"""


def judge(tmp_path: Path) -> str:
    write(tmp_path / "judge.py", COUNTING_JUDGE)
    return f"{sys.executable} {tmp_path / 'judge.py'}"


def test_run_with_a_judge_keeps_the_first_passing_seed_and_reports_it(
    cli: Cli, tmp_path: Path
) -> None:
    write(tmp_path / "j.csv", f"prompt,seed,steps,min_adherence\n{SCENE},7,2,0.5\n")
    run = cli("run", "j.csv", "--judge", judge(tmp_path))
    assert "1/1 succeeded, 0 failed" in run.stdout
    assert (tmp_path / "judge.calls").read_text() == f"{SCENE}\n{SCENE}\n"
    second = candidate_seed(7, 1)
    with closing(sqlite3.connect(tmp_path / "orchestrate.db")) as db:
        row = db.execute("SELECT seed, score, image_seed, judge, output_path FROM jobs").fetchone()
    assert row[:4] == (7, 0.9, second, sys.executable)
    assert f"Seed: {second}," in read_png_metadata(Path(row[4]).read_bytes())["parameters"]

    listing = cli("jobs", "list", "--below", "0.95").stdout.splitlines()
    assert len(listing) == 2 and listing[1].split()[:8] == [
        "1",
        "1",
        "succeeded",
        "1",
        "7",
        "2",
        "dpmpp_2m",
        "0.9",
    ]
    assert cli("jobs", "list", "--below", "0.9").stdout.splitlines()[1:] == []
    show = cli("jobs", "show", "1").stdout
    assert "           score: 0.9\n" in show
    assert f"      image_seed: {second}\n" in show
    assert f"           judge: {sys.executable}\n" in show
    assert f"    seeds tried (score): 7 0.2, {second} 0.9\n" in show
    status = cli("status", "--plain").stdout
    assert (
        "Quality gate, batch 1 (min score 0.5): 1/1 judged, 1 passed, 0 failed the gate, "
        "mean score 0.9"
    ) in status.splitlines()

    # the kept image regenerates from its PNG alone, without its gate or a judge
    proc = cli("reproduce", row[4])
    assert proc.stdout.splitlines() == [f"{row[4]}: reproduced, pixels identical"]


def test_bad_gates_and_judges_are_refused_before_any_work(cli: Cli, tmp_path: Path) -> None:
    write(tmp_path / "bad.csv", "prompt,min_score,quality_tries\na,1.5,\nb,0.5,30\n")
    proc = cli("submit", "bad.csv", check=2)
    assert proc.stderr.splitlines() == [
        "error: bad.csv:2: column 'min_score': must be between 0 and 1 (got '1.5')",
        "error: bad.csv:3: column 'quality_tries': must be between 1 and 20 (got '30')",
        "2 errors in the manifest; nothing was submitted",
    ]
    write(tmp_path / "j.csv", f"prompt\n{SCENE}\n")
    proc = cli("run", "j.csv", "--judge", "no-such-judge --strict", check=2)
    assert proc.stderr.strip() == (
        "error: --judge: 'no-such-judge' is not a command on PATH nor an executable file"
    )
    proc = cli("submit", "j.csv", "--min-score", "2", check=2)
    assert "Invalid value for '--min-score' / '--min-adherence'" in proc.stderr
    assert not (tmp_path / "orchestrate.db").exists()  # nothing at all was written


def test_generate_prints_the_judges_score(cli: Cli, tmp_path: Path) -> None:
    proc = cli("generate", SCENE, "--seed", "3", "--steps", "2", "--judge", judge(tmp_path))
    assert proc.stderr.strip().endswith(f", score 0.2 ({sys.executable})")
    assert Path(proc.stdout.strip()).is_file()
    proc = cli("generate", "a lighthouse", "--steps", "2", "--judge", "builtin", check=2)
    assert proc.stderr.strip() == (
        "error: the built-in judge only knows the scenes world (prompts like 'two small "
        "yellow squares on a black background'), not 'a lighthouse'; give the worker "
        "--judge CMD"
    )
    assert len(list(tmp_path.glob("*.png"))) == 1  # the refused one wrote nothing
