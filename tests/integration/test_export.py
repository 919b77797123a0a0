"""Dataset export: imagefolder, Parquet and WebDataset, read back with the tools users use.

Succeeded jobs come from a real LocalWorker and store with a fake runner (real PNG files,
real attempt rows); the real pipeline is tested elsewhere.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from contract.errors import JobInputError, UsageError
from orchestrator.cli import cli
from orchestrator.config import WorkerSettings
from orchestrator.export import COLUMNS, export_dataset
from orchestrator.store import JobStore
from orchestrator.transports.local import LocalWorker
from tests.conftest import submit_text
from workers.task import PipelineCache, TaskOutput

MANIFEST = (
    "prompt,negative_prompt,seed,num_images,width,height,steps\n"
    '"a red fox, in the snow",blurry,10,2,64,64,4\n'
    "un café la nuit ☕,,20,1,96,64,5\n"
    "broken,,30,1,64,64,4\n"
)
# job id -> (batch, prompt, seed, width, height); job 4 ("broken") fails and is never exported
EXPECTED = {
    1: (1, "a red fox, in the snow", 10, 64, 64),
    2: (1, "a red fox, in the snow", 11, 64, 64),
    3: (1, "un café la nuit ☕", 20, 96, 64),
    5: (2, "a second batch", 40, 64, 128),
}


def fake_runner(
    job: dict[str, Any], _cache: PipelineCache, _stop: Callable[[], bool]
) -> TaskOutput:
    """A real PNG of the job's size, and every stage timing a worker reports."""
    if job["prompt"] == "broken":
        raise JobInputError("this job can never succeed")
    buf = io.BytesIO()
    Image.new("RGB", (job["width"], job["height"]), (job["seed"] % 256, 40, 80)).save(buf, "PNG")
    result = {
        "backend": "fake",
        "device": "cpu",
        "dtype": "fp32",
        "torch_threads": 1,
        "text_encode_s": 0.01 * job["id"],
        "denoise_s": 0.5 + job["id"],
        "decode_s": 0.125,
        "total_s": 1.0 + job["id"],
    }
    return TaskOutput(png=buf.getvalue(), result=result)


@pytest.fixture
def done(store: JobStore, tmp_path: Path) -> JobStore:
    """Two batches worked through: jobs 1, 2, 3 and 5 succeeded, job 4 failed."""
    submit_text(store, MANIFEST)
    submit_text(store, "prompt,seed,width,height\na second batch,40,64,128\n")
    settings = WorkerSettings(output_dir=tmp_path / "out", burst=True, poll_seconds=0.05)
    stats = LocalWorker(store, settings, cache=PipelineCache(), runner=fake_runner).run()
    assert (stats.succeeded, stats.failed) == (4, 1)
    return store


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """`datasets` with no network and every cache under this test's folder."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    yield tmp_path / "hf_cache"


def check_rows(rows: list[dict[str, Any]], expected: dict[int, tuple[Any, ...]]) -> None:
    """Every exported row is the job it claims to be, with its image and timings."""
    assert [r["job_id"] for r in rows] == sorted(expected)
    for r in rows:
        batch, prompt, seed, width, height = expected[r["job_id"]]
        assert (r["batch_id"], r["prompt"], r["seed"]) == (batch, prompt, seed)
        assert (r["width"], r["height"]) == (width, height)
        assert r["image"].size == (width, height)
        assert r["image"].getpixel((0, 0)) == (seed % 256, 40, 80)
        assert r["denoise_s"] == 0.5 + r["job_id"] and r["total_s"] == 1.0 + r["job_id"]
        assert r["decode_s"] == 0.125 and r["text_encode_s"] == pytest.approx(0.01 * r["job_id"])
        assert r["scheduler"] == "dpmpp_2m" and r["model"] == "tiny"
        assert r["quantization"] == "fp16" and r["guidance_scale"] == 7.5
        # what was asked (fp16), and what ran (fp32 on the CPU)
        assert (r["backend"], r["device"], r["dtype"]) == ("fake", "cpu", "fp32")
        if r["job_id"] == 1:
            assert (r["negative_prompt"], r["steps"]) == ("blurry", 4)


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_imagefolder_loads_with_datasets(done: JobStore, tmp_path: Path, hf_offline: Path) -> None:
    result = export_dataset(done, tmp_path / "ds", "imagefolder")
    assert (result.rows, result.copied) == (4, 4)
    folder = tmp_path / "ds" / "train"
    assert sorted(p.name for p in folder.iterdir()) == [
        "000001.png",
        "000002.png",
        "000003.png",
        "000005.png",
        "metadata.jsonl",
    ]
    lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert list(first) == sorted(first)  # sort_keys
    assert set(first) == {"file_name", *COLUMNS}
    assert [json.loads(line)["file_name"] for line in lines] == [
        "000001.png",
        "000002.png",
        "000003.png",
        "000005.png",
    ]

    from datasets import load_dataset

    ds = load_dataset("imagefolder", data_dir=str(tmp_path / "ds"), cache_dir=str(hf_offline))
    assert list(ds) == ["train"]
    check_rows(sorted(ds["train"], key=lambda r: r["job_id"]), EXPECTED)


def test_parquet_loads_with_datasets_and_filters_by_batch(
    done: JobStore, tmp_path: Path, hf_offline: Path
) -> None:
    result = export_dataset(done, tmp_path / "ds", "parquet", split="validation")
    path = tmp_path / "ds" / "validation.parquet"
    assert result.files == [path] and result.rows == 4
    assert result.card == tmp_path / "ds" / "README.md"
    one = export_dataset(done, tmp_path / "one", "parquet", batch_id=2)
    assert one.rows == 1

    from datasets import Image as ImageFeature
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files={"validation": str(path)}, cache_dir=str(hf_offline))
    split = ds["validation"]
    assert isinstance(split.features["image"], ImageFeature)
    assert split.column_names == ["image", *COLUMNS]
    check_rows(list(split), EXPECTED)

    only = load_dataset("parquet", data_files=str(one.location), cache_dir=str(hf_offline))
    check_rows(list(only["train"]), {5: EXPECTED[5]})


def test_webdataset_shards(done: JobStore, tmp_path: Path) -> None:
    result = export_dataset(done, tmp_path / "wds", "webdataset", shard_size=3)
    assert [p.name for p in result.files] == ["train-000000.tar", "train-000001.tar"]
    assert result.card is not None and result.card.name == "README.md"
    members: list[tarfile.TarInfo] = []
    contents: dict[str, bytes] = {}
    for shard in result.files:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                members.append(m)
                f = tar.extractfile(m)
                assert f is not None
                contents[m.name] = f.read()
    keys = ["000001", "000002", "000003", "000005"]
    assert [m.name for m in members] == [
        f"{k}.{ext}" for k in keys for ext in ("png", "json", "txt")
    ]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (946684800, 0, 0, "", "", 0o644)
    for job_id, (batch, prompt, seed, width, height) in EXPECTED.items():
        key = f"{job_id:06d}"
        assert contents[f"{key}.txt"].decode("utf-8") == prompt
        meta = json.loads(contents[f"{key}.json"])
        assert list(meta) == sorted(meta) and set(meta) == set(COLUMNS)
        assert (meta["job_id"], meta["batch_id"], meta["seed"]) == (job_id, batch, seed)
        assert contents[f"{key}.png"] == Path(done.get_job(job_id)["output_path"]).read_bytes()
        with Image.open(io.BytesIO(contents[f"{key}.png"])) as img:
            assert img.size == (width, height)

    # fewer rows later: the shard past the end goes, so it is not read as part of the split
    again = export_dataset(done, tmp_path / "wds", "webdataset", shard_size=10)
    assert (len(again.files), again.removed) == (1, 1)
    assert sorted(p.name for p in (tmp_path / "wds").iterdir()) == ["README.md", "train-000000.tar"]


@pytest.mark.parametrize("fmt", ["imagefolder", "parquet", "webdataset"])
def test_exports_are_byte_identical(done: JobStore, tmp_path: Path, fmt: str) -> None:
    export_dataset(done, tmp_path / "a", fmt, shard_size=2)
    export_dataset(done, tmp_path / "b", fmt, shard_size=2)
    first = files_of(tmp_path / "a")
    assert first and first == files_of(tmp_path / "b")
    export_dataset(done, tmp_path / "a", fmt, shard_size=2)  # over itself
    assert files_of(tmp_path / "a") == first
    assert not list((tmp_path / "a").rglob("*.tmp"))


def test_imagefolder_is_incremental(done: JobStore, tmp_path: Path) -> None:
    export_dataset(done, tmp_path / "ds", "imagefolder")
    folder = tmp_path / "ds" / "train"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}

    again = export_dataset(done, tmp_path / "ds", "imagefolder")
    assert (again.copied, again.removed) == (0, 0)
    assert again.summary().endswith("(0 copied, 4 already there)")
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")} == before

    # a missing image and a truncated one are copied again; the rest are left alone
    (folder / "000002.png").unlink()
    (folder / "000003.png").write_bytes(b"partial")
    third = export_dataset(done, tmp_path / "ds", "imagefolder")
    assert third.copied == 2
    assert (folder / "000003.png").read_bytes() == Path(done.get_job(3)["output_path"]).read_bytes()
    assert (folder / "000001.png").stat().st_mtime_ns == before["000001.png"]

    # one batch only: the other batch's images go (ours only), metadata is rewritten
    (folder / "cover.png").write_bytes(b"not ours")
    only = export_dataset(done, tmp_path / "ds", "imagefolder", batch_id=2)
    assert (only.rows, only.removed) == (1, 3)
    assert sorted(p.name for p in folder.iterdir()) == ["000005.png", "cover.png", "metadata.jsonl"]
    meta = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["job_id"] for line in meta] == [5]


def test_nothing_to_export_and_bad_options(done: JobStore, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no succeeded jobs in batch 7"):
        export_dataset(done, tmp_path / "x", "parquet", batch_id=7)
    with pytest.raises(UsageError, match="unknown export format 'zip'"):
        export_dataset(done, tmp_path / "x", "zip")
    with pytest.raises(UsageError, match="split name 'a/b'"):
        export_dataset(done, tmp_path / "x", "imagefolder", split="a/b")
    missing = Path(done.get_job(2)["output_path"])
    missing.unlink()
    with pytest.raises(UsageError, match=f"job 2: its image {missing} is missing"):
        export_dataset(done, tmp_path / "x", "webdataset")
    assert not (tmp_path / "x").exists()


def run_cli(*args: str) -> int:
    try:
        cli(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_export_and_empty_database(
    done: JobStore, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ds"
    assert run_cli("--db", db_url, "export", str(out), "--format", "webdataset") == 0
    assert capsys.readouterr().out == f"exported 4 images as webdataset to {out} (1 shard)\n"
    assert run_cli("--db", db_url, "export", str(out), "--format", "parquet", "--batch", "1") == 0
    assert capsys.readouterr().out == f"exported 3 images as parquet to {out / 'train.parquet'}\n"

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert run_cli("--db", empty, "db", "upgrade") == 0
    capsys.readouterr()
    assert run_cli("--db", empty, "export", str(out), "--format", "imagefolder") == 2
    assert (
        capsys.readouterr().err == "error: nothing to export: no succeeded jobs in the database\n"
    )


def test_the_manifests_labels_reach_every_format(
    store: JobStore, tmp_path: Path, hf_offline: Path
) -> None:
    """Tags and meta_* columns a user wrote are columns of the dataset (issue 12)."""
    submit_text(
        store,
        "prompt,seed,tags,meta_split,meta_source\n"
        "a fox,1,animal;red,train,web\n"
        "a cat,2,animal,val,\n",
    )
    settings = WorkerSettings(output_dir=tmp_path / "out", burst=True, poll_seconds=0.05)
    LocalWorker(store, settings, cache=PipelineCache(), runner=fake_runner).run()
    expected = [
        {"tags": "animal,red", "meta_split": "train", "meta_source": "web"},
        {"tags": "animal", "meta_split": "val", "meta_source": None},
    ]
    from datasets import load_dataset

    export_dataset(store, tmp_path / "if", "imagefolder")
    lines = (tmp_path / "if" / "train" / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    pq = export_dataset(store, tmp_path / "pq", "parquet")
    ds = load_dataset("parquet", data_files=str(pq.location), cache_dir=str(hf_offline))["train"]
    assert [{k: r[k] for k in expected[0]} for r in ds] == expected
    wds = export_dataset(store, tmp_path / "wds", "webdataset")
    with tarfile.open(wds.files[0]) as tar:
        meta = json.loads(tar.extractfile("000001.json").read())  # type: ignore[union-attr]
    assert {k: meta[k] for k in expected[0]} == expected[0]


def test_jobs_show_says_what_was_asked_and_what_ran(done: JobStore, db_url: str) -> None:
    """It said "quantization: fp16" of an image computed in fp32 on the CPU."""
    from click.testing import CliRunner

    from orchestrator.cli.common import main

    shown = CliRunner().invoke(main, ["--db", db_url, "jobs", "show", "1"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert (
        "    quantization: fp16\n          ran as: requested fp16, ran fp32 on cpu "
        "(fake, 1 torch thread)\n"
    ) in shown.output
    assert "attempt 1: succeeded on " in shown.output and " (fake cpu fp32) from " in shown.output
    # The model's licence, as its batch recorded it at submit.
    assert "         licence: MIT (built-in, https://opensource.org/license/mit)\n" in shown.output


def load_card(path: Path) -> Any:
    """The card as the Hub's parser reads it (warnings are errors in this suite)."""
    from huggingface_hub import DatasetCard

    return DatasetCard.load(path)


@pytest.mark.parametrize("fmt", ["imagefolder", "parquet", "webdataset"])
def test_every_export_ships_a_dataset_card_the_hub_reads(
    done: JobStore, tmp_path: Path, fmt: str
) -> None:
    result = export_dataset(done, tmp_path / "ds", fmt)
    assert result.card == tmp_path / "ds" / "README.md"
    card = load_card(result.card)
    assert card.data.license == "mit"  # the built-in tiny's weights are this project's
    assert card.data.task_categories == ["text-to-image"]
    assert card.data.size_categories == ["n<1K"]
    assert "synthetic" in card.data.tags and "ai-generated" in card.data.tags
    text = result.card.read_text(encoding="utf-8")
    assert "4 images, **every one AI-generated**" in text
    assert (
        "| train | tiny | MIT | 4 | dpmpp\\_2m | 4-20 (3 values) | 7.5 | 10-40 (4 values) "
        "| 64x128, 64x64, 96x64 |"
    ) in text
    assert "split train: batch 1: 3, batch 2: 1" in text
    assert "trainedAlgorithmicMedia" in text and "orchestrate reproduce IMAGE.png" in text
    # The same export again writes the same card.
    before = result.card.read_bytes()
    export_dataset(done, tmp_path / "ds", fmt)
    assert result.card.read_bytes() == before


def test_licences_per_image_and_per_set(store: JobStore, tmp_path: Path) -> None:
    """Two models under different terms: each row carries its own, the card lists both and
    says the limit FLUX.1 [dev]'s licence puts on its images."""
    submit_text(store, "prompt,seed\na fox,1\n")
    submit_text(store, "prompt,seed,model\na cat,2,black-forest-labs/FLUX.1-dev\n")
    settings = WorkerSettings(output_dir=tmp_path / "out", burst=True, poll_seconds=0.05)
    LocalWorker(store, settings, cache=PipelineCache(), runner=fake_runner).run()
    result = export_dataset(store, tmp_path / "if", "imagefolder")
    lines = (tmp_path / "if" / "train" / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(r["model"], r["licence"]) for r in rows] == [
        ("tiny", "MIT"),
        ("black-forest-labs/FLUX.1-dev", "flux-1-dev-non-commercial-license"),
    ]
    assert rows[0]["licence_restriction"] is None
    assert "competes" in rows[1]["licence_restriction"]
    assert result.card is not None
    card = load_card(result.card)
    assert card.data.license == ["mit", "other"]
    assert card.data.license_name == "flux-1-dev-non-commercial-license"
    assert card.data.license_link.startswith("https://huggingface.co/black-forest-labs/")
    assert "**Limit: its images are not to be used to train" in result.card.read_text()


def test_a_readme_the_export_did_not_write_is_refused_and_kept(
    done: JobStore, tmp_path: Path
) -> None:
    (tmp_path / "ds").mkdir()
    mine = tmp_path / "ds" / "README.md"
    mine.write_text("# my notes\n")
    with pytest.raises(UsageError, match="is not a card an export wrote"):
        export_dataset(done, tmp_path / "ds", "parquet")
    assert mine.read_text() == "# my notes\n"
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["README.md"]
    # --no-card: the data, and the user's README.md as it was.
    result = export_dataset(done, tmp_path / "ds", "parquet", card=False)
    assert result.card is None and mine.read_text() == "# my notes\n"
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["README.md", "train.parquet"]


def test_a_second_split_keeps_the_first_in_the_card(done: JobStore, tmp_path: Path) -> None:
    """Exporting validation beside train describes both (the card carries each split's
    summary), and exporting train again replaces only train's."""
    export_dataset(done, tmp_path / "ds", "parquet", batch_id=1)
    result = export_dataset(done, tmp_path / "ds", "parquet", batch_id=2, split="validation")
    assert result.card is not None
    card = load_card(result.card)
    assert card.data.size_categories == ["n<1K"]
    text = result.card.read_text()
    assert "4 images, **every one AI-generated**" in text
    assert "split `train`, 3 as Parquet" in text and "split `validation`, 1 as Parquet" in text
    assert "| train | tiny | MIT | 3 |" in text and "| validation | tiny | MIT | 1 |" in text
    again = export_dataset(done, tmp_path / "ds", "parquet", split="train")
    assert again.card is not None
    assert (
        "5 images" in again.card.read_text()
        and "| train | tiny | MIT | 4 |" in again.card.read_text()
    )


def test_the_card_escapes_what_users_wrote_and_counts_seed_zero(tmp_path: Path) -> None:
    from orchestrator.dataset_card import dataset_card, size_category
    from workers.models.licences import UNKNOWN

    row = {
        "model": "evil](javascript:x) <img src=x> `code` | pipe\nnewline",
        "scheduler": "euler",
        "steps": 4,
        "guidance_scale": 5.0,
        "seed": 0,
        "image_seed": None,
        "width": 64,
        "height": 64,
        "batch_id": 1,
        "licence_record": UNKNOWN.as_dict(),
    }
    text = dataset_card([row], "parquet", "train")
    table_row = next(line for line in text.splitlines() if line.startswith("| train |"))
    # Markdown and HTML punctuation is escaped: no tag, link or code span comes through.
    for mark in ("<", ">", "]", "[", "`"):
        assert re.search(rf"(?<!\\){re.escape(mark)}", table_row) is None, (mark, table_row)
    assert table_row.count(" | ") == 8  # nine cells: the pipe in the name is escaped
    assert "| 0 | 64x64 |" in table_row  # seed 0 is a seed
    (tmp_path / "README.md").write_text(text)
    assert load_card(tmp_path / "README.md").data.license == "unknown"
    assert size_category(999) == "n<1K" and size_category(150_000_000) == "100M<n<1B"
