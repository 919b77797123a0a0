"""Limits a user can see and change, and the one-sentence refusals of issue 13: the jobs one
submit may expand to, crafted metadata for ``reproduce``, a worker on the wrong Redis
database, a database from a newer schema."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from contract import protocol as proto
from contract.errors import DatabaseError, ManifestError, UsageError
from orchestrator.database import open_engine, upgrade
from orchestrator.manifest import parse_manifest
from orchestrator.reproduce import read_recorded
from tests.conftest import fixed_size
from tests.redis_server import RedisServer
from workers.metadata import encode_png


@pytest.mark.slow
def test_a_tiny_manifest_cannot_expand_to_a_million_jobs() -> None:
    rows = "prompt,num_images\n" + "".join(f"p{i},10000\n" for i in range(101))
    with pytest.raises(ManifestError) as info:
        parse_manifest(rows, "big.csv", native_size=fixed_size)
    (issue,) = info.value.issues  # one error, at the row that crosses the limit
    assert (issue.line, issue.column) == (102, "num_images")
    assert "expands the manifest past 1,000,000 jobs" in issue.message
    m = parse_manifest(rows, "big.csv", native_size=fixed_size, max_jobs=2_000_000)
    assert len(m.jobs) == 1_010_000
    with pytest.raises(ManifestError, match="1 error"):
        parse_manifest("prompt\na\nb\nc\n", "x.csv", native_size=fixed_size, max_jobs=2)


def crafted(tmp_path: Path, **job: object) -> Path:
    base = {
        "prompt": "p",
        "negative_prompt": "",
        "seed": 1,
        "steps": 20,
        "guidance_scale": 7.5,
        "width": 64,
        "height": 64,
        "scheduler": "dpmpp_2m",
        "model": "tiny",
    }
    base.update(job)
    path = tmp_path / "crafted.png"
    path.write_bytes(
        encode_png(Image.new("RGB", (8, 8)), "p", {"job": base, "run": {}}, model="tiny")
    )
    return path


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 100_000), ("width", 8192), ("height", 0), ("guidance_scale", 1e9), ("seed", -1)],
)
def test_reproduce_refuses_crafted_metadata_out_of_bounds(
    tmp_path: Path, field: str, value: object
) -> None:
    with pytest.raises(UsageError, match=f"out of bounds: {field} must be"):
        read_recorded(crafted(tmp_path, **{field: value}))
    assert read_recorded(crafted(tmp_path))[1]["steps"] == 20


def test_a_worker_on_an_empty_redis_database_says_so(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from workers.rq.worker import OrchestrateWorker
    from workers.task import PipelineCache

    conn = proto.connect(redis_server.url.removesuffix("/0") + "/3")
    worker = OrchestrateWorker(connection=conn, cache=PipelineCache())
    with caplog.at_level(logging.WARNING):
        worker._no_queue_for(30)
        assert not caplog.records
        worker._no_queue_for(61)
        worker._no_queue_for(120)  # once
    (record,) = caplog.records
    assert "no queue of an orchestrate coordinator on Redis 127.0.0.1" in record.getMessage()
    assert "database 3 for 61 s" in record.getMessage()


def test_a_newer_schema_is_named_in_one_sentence(db_url: str) -> None:
    upgrade(db_url)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    with pytest.raises(DatabaseError) as info:
        open_engine(db_url)
    assert str(info.value).startswith(
        "the database is at schema 0099, which is newer than this orchestrate knows (its newest is"
    )
