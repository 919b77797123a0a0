"""A manifest with alternatives, a wildcard file, a grid column, a preset and per-row folders,
run end to end on the built-in model, exported, and loaded back with `datasets` (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Cli, write
from workers.metadata import read_png_metadata

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)


def test_an_expanded_manifest_runs_end_to_end_and_its_variants_reach_the_dataset(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "animal.txt", "# one per line\nfox\nowl\n")
    write(
        tmp_path / "grid.csv",
        "prompt,steps,preset,output_dir,output_name,meta_split\n"
        "a {red|blue} __animal__,2|3,realtime,animals/{steps},{seed},train\n"
        "a plain hill,40,pro,,,val\n",
    )
    run = cli("run", "grid.csv", timeout=1800)
    assert run.stdout.splitlines()[0] == "batch 1: 2 rows, 9 jobs added, 0 duplicates"
    assert "9/9 succeeded" in run.stdout

    out = tmp_path / "output"
    grid = sorted(p.relative_to(out).parent.as_posix() for p in out.rglob("*.png"))
    assert grid == ["1"] + ["animals/2"] * 4 + ["animals/3"] * 4
    png = next((out / "animals" / "3").glob("*.png"))
    meta = read_png_metadata(png.read_bytes())["meta"]
    assert meta["job"]["quantization"] == "4bit"  # from the preset
    assert meta["job"]["steps"] == 3  # the row's own column wins over the preset's 15
    assert meta["job"]["extra"]["var_steps"] == "3" and meta["job"]["extra"]["preset"] == "realtime"
    assert meta["job"]["extra"]["var_animal"] in ("fox", "owl")

    cli("export", "ds", "--format", "parquet")
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    from datasets import load_dataset

    (parquet,) = (tmp_path / "ds").glob("*.parquet")
    rows = list(
        load_dataset("parquet", data_files=str(parquet), cache_dir=str(tmp_path / "hf"))["train"]
    )
    assert len(rows) == 9

    def variant(r: dict) -> tuple:  # type: ignore[type-arg]
        return (r["var_prompt_1"], r["var_animal"], r["var_steps"], r["preset"], r["meta_split"])

    cells = sorted(variant(r) for r in rows if r["preset"] == "realtime")
    assert cells == sorted(
        (c, a, s, "realtime", "train")
        for c in ("red", "blue")
        for a in ("fox", "owl")
        for s in "23"
    )
    assert [variant(r) for r in rows if r["preset"] == "pro"] == [(None, None, None, "pro", "val")]
    hill = next(r for r in rows if r["preset"] == "pro")
    assert (hill["scheduler"], hill["steps"], hill["quantization"]) == ("pndm", 40, "fp16")
    assert json.loads(json.dumps(hill["prompt"])) == "a plain hill"
