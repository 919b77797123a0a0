"""`orchestrate model` as a user types it: the errors a user meets first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Cli

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)


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


def test_recipe_may_choose_grouped_layers_and_says_what_os_they_need(
    cli: Cli, tmp_path: Path
) -> None:
    from tests.unit.test_palettize import synthetic_analysis

    (tmp_path / "a.json").write_text(json.dumps(synthetic_analysis()))
    grouped = cli("model", "recipe", "a.json", "--bits", "4.5", "--name", "g").stdout
    assert "Core ML needs macOS15" in grouped.splitlines()[0]
    assert "'4g16'" in grouped or "'2g16'" in grouped
    plain = cli("model", "recipe", "a.json", "--bits", "4.5", "--no-grouped", "--name", "p")
    assert "Core ML needs macOS13" in plain.stdout.splitlines()[0]
    saved = json.loads((tmp_path / "a.json").read_text())["recipes"]
    assert any(isinstance(v, str) for v in saved["g"].values())
    assert all(isinstance(v, int) for v in saved["p"].values())
    bad = cli(
        "model",
        "compress",
        "--model",
        "tiny",
        "--bits",
        "3g16",
        "--format",
        "torch",
        "--out",
        "v",
        check=2,
    )
    assert bad.stderr.strip() == (
        "error: --bits: '3g16' is not a palettization; use 1, 2, 4, 6, 8 bits (one lookup table "
        "per tensor), 16 (keep fp16), or '<bits>g<group size>' such as '4g16' (one lookup table "
        "per 16 output channels)"
    )
