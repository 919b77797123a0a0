"""Dataset export: succeeded jobs' images and metadata as a Hugging Face ``imagefolder``, a
Parquet file with embedded images, or WebDataset tar shards, each with a dataset card
(``README.md``, ``orchestrator.dataset_card``) that the Hugging Face Hub reads.

Every export is reproducible: rows go in job-id order, JSON keys are sorted, tar headers carry
fixed times and owners, and Parquet is written with fixed options, so the same database and
images give byte-identical files. Files appear whole or not at all (temporary name, then rename).

An export during a live run takes the images published so far: a result committed but not yet
in place (being published this moment) is left out and counted, never waited for. Images in a
folder that belongs to another database (``orchestrator.ownership``) are refused.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from contract.errors import UsageError
from contract.job import JOB_FIELDS
from orchestrator.dataset_card import CARD_NAME, dataset_card, is_ours
from orchestrator.models import Job
from orchestrator.output import write_atomic
from orchestrator.ownership import Owner, owner_above, refuse
from orchestrator.store import ReadModel
from orchestrator.store.base import EXPORT_RUN, EXPORT_TIMINGS
from workers.models.licences import Licence, from_record

FORMATS = ("imagefolder", "parquet", "webdataset")
DEFAULT_SHARD_SIZE = 1000


def _arrow_type(column: str) -> str:
    """The Arrow type of a job column, from the schema's own type."""
    from sqlalchemy import Float, Integer

    kind = Job.__table__.columns[column].type
    return (
        "int64" if isinstance(kind, Integer) else "float64" if isinstance(kind, Float) else "string"
    )


# Metadata of each image, in column order, with the Arrow type of its Parquet column: the ids,
# the job's own fields (as the schema types them), what its quality gate's judge said (score:
# null without a gate; image_seed: the seed that made the image, the job's own without a
# gate), what its attempt ran on (backend, device, and the dtype it computed in, beside the
# quantization the job asked for) and its stage timings.
COLUMNS: dict[str, str] = {
    "job_id": "int64",
    "batch_id": "int64",
    **{name: _arrow_type(name) for name in (*JOB_FIELDS, "tags", "score", "image_seed")},
    **dict.fromkeys(EXPORT_RUN, "string"),
    **dict.fromkeys(EXPORT_TIMINGS, "float64"),
    # The model's licence as the batch recorded it at submit (workers.models.licences): its
    # id (SPDX where one exists), its text's URL, and a limit on what the image may be used for.
    "licence": "string",
    "licence_url": "string",
    "licence_restriction": "string",
}
_SPLIT = re.compile(r"\w+(\.\w+)*")  # what `datasets` accepts as a split name
_OUR_IMAGE = re.compile(r"\d{6,}(-[^/]*)?\.png")
# Rows per Parquet row group: small groups keep a reader's memory low when rows hold images.
_ROW_GROUP = 100
# 2000-01-01T00:00:00Z: a fixed, plausible mtime for every tar member (0 trips some tools).
_TAR_MTIME = 946684800


@dataclass
class ExportResult:
    """What an export wrote."""

    format: str
    rows: int
    location: Path  # the split folder, the Parquet file, or the shards' folder
    files: list[Path] = field(default_factory=list)  # the files written this time
    copied: int = 0  # imagefolder: images copied (the rest were already there)
    removed: int = 0  # stale images or shards of an earlier, larger export
    in_flight: int = 0  # succeeded jobs whose image was not in place yet: left out
    card: Path | None = None  # the dataset card (README.md) beside the data

    def summary(self) -> str:
        """One line for the user (two when images were left out)."""
        text = f"exported {self.rows} images as {self.format} to {self.location}"
        if self.format == "imagefolder":
            text += f" ({self.copied} copied, {self.rows - self.copied} already there"
            text += f", {self.removed} stale removed)" if self.removed else ")"
        elif self.format == "webdataset":
            text += f" ({len(self.files)} shard{'s' if len(self.files) != 1 else ''}"
            text += f", {self.removed} stale removed)" if self.removed else ")"
        if self.in_flight:
            n = self.in_flight
            text += (
                f"\nleft out: {n} succeeded image{'s' if n != 1 else ''} not in place yet "
                "(being published now; if no worker or coordinator is running, `orchestrate "
                "verify --repair` puts them in place); export again to include them"
            )
        return text


def export_dataset(
    store: ReadModel,
    outdir: Path,
    fmt: str,
    *,
    batch_id: int | None = None,
    split: str = "train",
    shard_size: int = DEFAULT_SHARD_SIZE,
    card: bool = True,
) -> ExportResult:
    """Export the succeeded jobs (of one batch, or all) to ``outdir`` in format ``fmt``, with
    a dataset card (``README.md``) unless ``card`` is False."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not _SPLIT.fullmatch(split):
        raise UsageError(f"split name {split!r} must be letters, digits and '_' (e.g. 'train')")
    if shard_size < 1:
        raise UsageError(f"shard size must be at least 1 (got {shard_size})")
    everything = store.list_export_rows(batch_id)
    if not everything:
        where = f"in batch {batch_id}" if batch_id is not None else "in the database"
        raise UsageError(f"nothing to export: no succeeded jobs {where}")
    rows = [r for r in everything if r.get("published_at") is not None or not r["output_sha256"]]
    if not rows:
        raise UsageError(
            f"nothing to export yet: the {len(everything)} succeeded jobs' images are not in "
            "place (being published now; if no worker or coordinator is running, "
            "`orchestrate verify --repair` puts them in place)"
        )
    _check_sources(rows, store.identify_owner())
    outdir = Path(outdir)
    card_path = outdir / CARD_NAME
    if (
        card
        and card_path.exists()
        and not (card_path.is_file() and is_ours(card_path.read_text(errors="replace")))
    ):
        raise UsageError(
            f"{card_path} is there and is not a card an export wrote: the export writes its "
            "dataset card under that name; move it, export to another folder, or pass --no-card"
        )
    # Each batch's record parsed once, each (batch, model) looked up once: not per row.
    recorded = {
        bid: json.loads(licences or "{}") for bid, licences in store.read_licences(batch_id).items()
    }
    found: dict[tuple[int, str], Licence] = {}
    for row in rows:
        key = (row["batch_id"], row["model"])
        if key not in found:
            found[key] = from_record(recorded.get(key[0], {}).get(key[1]))
        licence = found[key]
        row.update(
            licence=licence.id,
            licence_url=licence.url,
            licence_restriction=licence.restriction,
            licence_record=licence.as_dict(),  # for the dataset card; not a column
        )
    if fmt == "imagefolder":
        result = _imagefolder(rows, outdir / split)
    elif fmt == "parquet":
        result = _parquet(rows, outdir / f"{split}.parquet")
    else:
        result = _webdataset(rows, outdir, split, shard_size)
    if card:
        earlier = card_path.read_text(errors="replace") if card_path.is_file() else None
        _publish(card_path, dataset_card(rows, fmt, split, earlier).encode("utf-8"), _file_mode())
        result.card = card_path
    result.in_flight = len(everything) - len(rows)
    return result


def _check_sources(rows: list[dict[str, Any]], mine: Owner) -> None:
    """Every image is there, in a folder no other database owns."""
    owners: dict[Path, tuple[Path, Owner] | None] = {}
    for row in rows:
        path = row.get("output_path")
        if not path or not Path(path).is_file():
            raise UsageError(
                f"job {row['id']}: its image {path or '(none recorded)'} is missing; "
                "`orchestrate verify --repair` makes it again"
            )
        found = owner_above(Path(path), owners)
        if found is not None and found[1].uid != mine.uid:
            raise refuse(found[0], found[1], mine)


def _extra(row: dict[str, Any]) -> dict[str, str]:
    """The manifest's own metadata columns of a job (``meta_*``, ``--extra-column``), under
    names that cannot shadow ours."""
    raw = json.loads(row.get("extra_json") or "{}")
    return {(k if k not in COLUMNS else f"extra_{k}"): v for k, v in raw.items()}


def columns_for(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The export's columns: ours, then every metadata column any of its jobs has (strings;
    null where a job has none), so every row has the same keys and Parquet one schema."""
    extra = sorted({k for row in rows for k in _extra(row)})
    return {**COLUMNS, **dict.fromkeys(extra, "string")}


def metadata(row: dict[str, Any], columns: dict[str, str] | None = None) -> dict[str, Any]:
    """The metadata of one exported image: the job's generation fields, ids, tags, its
    score and image seed, timings and the manifest's own metadata columns."""
    columns = columns or columns_for([row])
    extra = _extra(row)
    out = {
        name: row["id"] if name == "job_id" else extra[name] if name in extra else row.get(name)
        for name in columns
    }
    if out.get("image_seed") is None and "image_seed" in columns:
        out["image_seed"] = row.get("seed")
    return out


def _key(row: dict[str, Any]) -> str:
    return f"{int(row['id']):06d}"


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


def _file_mode() -> int:
    """The mode an ordinary new file gets here (0666 less the umask): temporary files are
    created 0600, and a dataset is made to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _publish(path: Path, data: bytes, mode: int) -> None:
    write_atomic(path, data)
    os.chmod(path, mode)


@contextlib.contextmanager
def _atomic_open(path: Path) -> Iterator[IO[bytes]]:
    """A file to stream into that replaces ``path`` only once it is complete and synced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), _file_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- imagefolder ------------------------------------------------------------------------------


def _imagefolder(rows: list[dict[str, Any]], folder: Path) -> ExportResult:
    """``folder/<job-id>[-<output_name>].png`` (the published file's own name) and
    ``folder/metadata.jsonl`` (HF's imagefolder layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    result = ExportResult("imagefolder", len(rows), folder)
    columns = columns_for(rows)
    mode = _file_mode()
    lines = []
    names = set()
    for row in rows:
        src = Path(row["output_path"])
        name = src.name if _OUR_IMAGE.fullmatch(src.name) else f"{_key(row)}.png"
        names.add(name)
        dst = folder / name
        # Incremental: a copy carries its source's size and mtime; an image made again (a
        # new file, published by rename) has another mtime even at the same size.
        have = src.stat()
        if not (dst.is_file() and _same_stamp(dst.stat(), have)):
            _publish(dst, src.read_bytes(), mode)
            os.utime(dst, ns=(have.st_atime_ns, have.st_mtime_ns))
            result.copied += 1
            result.files.append(dst)
        lines.append(_dumps({"file_name": name, **metadata(row, columns)}) + "\n")
    # Images of jobs no longer exported (another --batch, say) would be loaded without
    # metadata; only names of our own pattern are removed.
    for stale in sorted(folder.glob("*.png")):
        if _OUR_IMAGE.fullmatch(stale.name) and stale.name not in names:
            stale.unlink()
            result.removed += 1
    meta_path = folder / "metadata.jsonl"
    _publish(meta_path, "".join(lines).encode("utf-8"), mode)
    result.files.append(meta_path)
    return result


def _same_stamp(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


# -- parquet ----------------------------------------------------------------------------------


def _hf_features(columns: dict[str, str]) -> dict[str, Any]:
    """The ``datasets`` Features of the Parquet file, so ``image`` loads as an ``Image``."""
    dtypes = {"int64": "int64", "float64": "float64", "string": "string"}
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    for name, kind in columns.items():
        features[name] = {"dtype": dtypes[kind], "_type": "Value"}
    return features


def _parquet(rows: list[dict[str, Any]], path: Path) -> ExportResult:
    """One Parquet file: an ``image`` struct {bytes, path} and the metadata columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow_types = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols = columns_for(rows)
    schema = pa.schema(
        [pa.field("image", image_type), *(pa.field(n, arrow_types[t]) for n, t in cols.items())],
        # The key `datasets` reads its Features from (what Dataset.to_parquet writes).
        metadata={"huggingface": json.dumps({"info": {"features": _hf_features(cols)}})},
    )
    with (
        _atomic_open(path) as fh,
        pq.ParquetWriter(
            fh,
            schema,
            compression="zstd",
            compression_level=3,
            use_dictionary=False,
            write_statistics=True,
            # No page index, no bloom filters: fewer writer options whose defaults may drift.
            write_page_index=False,
        ) as writer,
    ):
        for i in range(0, len(rows), _ROW_GROUP):
            chunk = rows[i : i + _ROW_GROUP]
            columns: dict[str, list[Any]] = {
                "image": [
                    {"bytes": Path(r["output_path"]).read_bytes(), "path": f"{_key(r)}.png"}
                    for r in chunk
                ]
            }
            metas = [metadata(r, cols) for r in chunk]
            for name in cols:
                columns[name] = [m[name] for m in metas]
            writer.write_table(pa.table(columns, schema=schema), row_group_size=_ROW_GROUP)
    return ExportResult("parquet", len(rows), path, [path])


# -- webdataset -------------------------------------------------------------------------------


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _webdataset(
    rows: list[dict[str, Any]], outdir: Path, split: str, shard_size: int
) -> ExportResult:
    """``<split>-000000.tar``, ...: per sample ``{key}.png``, ``{key}.json``, ``{key}.txt``."""
    outdir.mkdir(parents=True, exist_ok=True)
    result = ExportResult("webdataset", len(rows), outdir)
    columns = columns_for(rows)
    for shard, start in enumerate(range(0, len(rows), shard_size)):
        path = outdir / f"{split}-{shard:06d}.tar"
        with (
            _atomic_open(path) as fh,
            tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for row in rows[start : start + shard_size]:
                key = _key(row)
                _tar_member(tar, f"{key}.png", Path(row["output_path"]).read_bytes())
                _tar_member(tar, f"{key}.json", _dumps(metadata(row, columns)).encode("utf-8"))
                _tar_member(tar, f"{key}.txt", row["prompt"].encode("utf-8"))
        result.files.append(path)
    # Shards past the last one, left by an earlier export of more rows, would be read as part
    # of this split.
    shard_name = re.compile(re.escape(split) + r"-(\d{6})\.tar")
    for old in sorted(outdir.glob(f"{split}-*.tar")):
        m = shard_name.fullmatch(old.name)
        if m and int(m.group(1)) >= len(result.files):
            old.unlink()
            result.removed += 1
    return result
