"""`orchestrate model` as a user types it: the errors a user meets first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.slow


def test_model_commands_explain_bad_input(cli: Cli, tmp_path: Path) -> None:
    too_big = cli("model", "analyze", "--model", "tiny", "--out", "a.json", check=2)
    assert too_big.stderr.strip().splitlines()[-1] == (
        "error: no Linear/Conv2d weight of this UNet has more than 100000 elements; lower "
        "--min-size (the tiny model's largest weights have ~37k)"
    )
    (tmp_path / "a.json").write_text(json.dumps({"recipes": {"r1": {"conv_in": 4}}}))
    assert cli("model", "recipe", "a.json", check=2).stderr.strip() == (
        "error: give exactly one of --bits or --psnr"
    )
    missing = cli(
        "model",
        "compress",
        "--model",
        "tiny",
        "--recipe",
        "a.json:r2",
        "--format",
        "torch",
        "--out",
        "v",
        check=2,
    )
    assert missing.stderr.strip() == "error: a.json has no recipe 'r2'; it has: r1"
    cli.env["ORCHESTRATE_CACHE"] = str(tmp_path / "empty-cache")  # no variants registered there
    assert cli("model", "list").stdout.strip() == (
        "no variants yet: `orchestrate model compress ...` makes one"
    )
