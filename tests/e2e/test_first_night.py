"""A first night's rough edges, as a user meets them: a model path that is not here, a model
name found nowhere, prompts the tiny model's world does not have."""

from __future__ import annotations

import socket
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.helpers import Cli, write

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)

GOOD = "prompt,steps\na red circle on a blue background,2\n"


def job_rows(tmp_path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(tmp_path / "orchestrate.db")) as db:
        return db.execute(
            "SELECT batch_id, model, status, attempts FROM jobs ORDER BY id"
        ).fetchall()


def test_a_model_path_that_is_not_here_is_refused_at_its_lines(cli: Cli, tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "a.csv", "prompt,model\nx,./models/sd15\ny,tiny\nz,./models/sd15\nw,~/x/y\n"
    )
    refused = cli("submit", str(manifest), check=2)
    home = Path("~/x/y").expanduser()
    assert refused.stderr.splitlines() == [
        f"error: {manifest}:2: column 'model': no such folder on this machine "
        f"({tmp_path / 'models' / 'sd15'}); lines 2, 4 name it (got './models/sd15')",
        f"error: {manifest}:5: column 'model': no such folder on this machine ({home}) "
        "(got '~/x/y')",
        "2 errors in the manifest; nothing was submitted (--skip-model-check submits anyway, "
        "for workers on machines that have it)",
    ]
    assert not (tmp_path / "orchestrate.db").exists() or job_rows(tmp_path) == []
    # the same model from --model is the flag's mistake, not a line's
    flagged = cli(
        "submit", "--model", "./models/sd15", str(write(tmp_path / "b.csv", GOOD)), check=2
    )
    assert flagged.stderr == (
        f"error: --model './models/sd15': no such folder on this machine "
        f"({tmp_path / 'models' / 'sd15'}); --skip-model-check submits anyway, for workers on "
        "machines that have it\n"
    )


def test_a_waiting_batch_that_cannot_run_here_is_named_with_the_way_out(
    cli: Cli, tmp_path: Path
) -> None:
    broken = write(tmp_path / "broken.csv", "prompt,model\nx,./models/sd15\ny,./models/sd15\n")
    cli("submit", "--skip-model-check", str(broken))
    good = write(tmp_path / "good.csv", GOOD)
    refused = cli("run", str(good), check=2)
    assert refused.stderr.splitlines() == [
        "error: model './models/sd15', 2 jobs waiting in batch 1 (broken.csv): no such folder "
        f"on this machine ({tmp_path / 'models' / 'sd15'})",
        "error: 1 model (2 jobs) cannot be loaded on this machine; nothing was submitted or "
        "run. They wait in batch 1 (broken.csv): `orchestrate jobs cancel --batch 1` cancels "
        "it, `orchestrate pause --batch 1` keeps it for a machine that has the model; "
        "--skip-model-check runs anyway (those jobs fail)",
    ]
    # the way out it names works: the run then makes the new manifest's image
    cli("pause", "--batch", "1")
    cli("run", str(good))
    assert job_rows(tmp_path) == [
        (1, "./models/sd15", "pending", 0),
        (1, "./models/sd15", "pending", 0),
        (2, "tiny", "succeeded", 1),
    ]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.subprocess  # huggingface_hub reads HF_ENDPOINT and HF_HOME at import
def test_a_model_name_found_nowhere_is_refused_before_the_night(cli: Cli, tmp_path: Path) -> None:
    # no network (the hub is a local port nothing listens on), HF_HUB_OFFLINE unset, an
    # empty cache: the machine the report was made on
    for var in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        cli.env.pop(var, None)
    cli.env["HF_HOME"] = str(tmp_path / "hf")
    cli.env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    manifest = write(tmp_path / "jobs.csv", "prompt,model,steps\na red circle,tiny-sdx,2\n")
    reason = (
        "not a built-in model (did you mean 'tiny-sd3'?) or a folder on this machine, "
        "and not in this machine's Hugging Face cache, and the hub cannot be reached "
        "(127.0.0.1 does not answer): download it where there is a network "
        "(`hf download tiny-sdx`) or give a local diffusers folder"
    )
    refused = cli("run", str(manifest), check=2)
    assert refused.stderr.splitlines() == [
        f"error: model 'tiny-sdx', 1 job: {reason}",
        "error: 1 model (1 job) cannot be loaded on this machine; nothing was submitted or run "
        "(--skip-model-check runs anyway: those jobs fail)",
    ]
    # run anyway: each try fails at once, in our one line, without huggingface_hub's
    # retries; retried, as the network may come back
    ran = cli("run", "--skip-model-check", "--max-attempts", "2", str(manifest), check=1)
    assert "Retrying in" not in ran.stderr and "huggingface_hub" not in ran.stderr
    assert ran.stderr.count(f"ModelLoadError: model 'tiny-sdx': {reason}") == 2
    assert job_rows(tmp_path) == [(1, "tiny-sdx", "failed", 2)]
    # HF_HUB_OFFLINE=1 says the hub will not be asked: a retry cannot help, so there is none
    cli.env["HF_HUB_OFFLINE"] = "1"
    cli("jobs", "retry", "--failed")
    again = cli("run", "--skip-model-check", check=1)
    assert "retrying" not in again.stderr
    assert "ModelNotFound: model 'tiny-sdx': not a built-in model (did you mean" in again.stderr
    assert job_rows(tmp_path) == [(1, "tiny-sdx", "failed", 1)]  # one try since the retry


def test_submit_warns_once_about_tiny_prompts_outside_its_world(cli: Cli, tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "jobs.csv",
        "prompt,num_images\n"
        "two large red squares on a blue background,2\n"
        "a red circle on a blue background,1\n"
        '"a {red|purple} circle on a blue background",1\n',
    )
    submitted = cli("submit", str(manifest))
    assert submitted.stdout == "batch 1: 3 rows, 5 jobs added, 0 duplicates\n"
    assert submitted.stderr == (
        f"warning: {manifest}: 2 lines (2, 4) give the built-in tiny model prompts outside the "
        "world it draws (line 2: 'two large red squares on a blue background': only one large "
        "shape fits); they are drawn anyway, and the built-in judge cannot score them (the "
        'grammar: README, "The built-in tiny model")\n'
    )
