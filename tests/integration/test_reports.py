"""The status and dashboard queries (store.reports, orchestrator.status), their views and
indexes, and the ``status`` command."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import event, text

from contract.errors import JobInputError
from orchestrator.cli.common import main
from orchestrator.config import WorkerSettings
from orchestrator.database import downgrade, upgrade
from orchestrator.status import overview, render_rich, render_text
from orchestrator.store import JobStore
from orchestrator.store.reports import error_key, percentile, summarize
from orchestrator.transports.local import LocalWorker
from tests.conftest import submit_text
from workers.task import PipelineCache, TaskOutput

FOX = 'a red fox <b>in "snow"</b> & ice'
BROKEN = "broken prompt"
INPUT_ERROR = "JobInputError: quantization '4bit' is not available"


def png(seed: int, size: int = 64) -> bytes:
    """A small gradient image, different for each seed."""
    img = Image.new("RGB", (size, size))
    img.putdata(
        [
            ((x * 4 + seed * 60) % 256, (y * 4) % 256, (seed * 90) % 256)
            for y in range(size)
            for x in range(size)
        ]
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def runner(job: dict[str, Any], _cache: PipelineCache, _stop: Callable[[], bool]) -> TaskOutput:
    """A pipeline stand-in: fails the broken prompt, else an image and stage timings that
    grow with the job id."""
    if job["prompt"] == BROKEN:
        raise JobInputError("quantization '4bit' is not available")
    k = job["id"]
    return TaskOutput(
        png=png(job["seed"] + k),
        result={
            "backend": "fake",
            "device": "cpu",
            "dtype": "fp32",
            "torch_threads": 1,
            "load_s": 0.0,
            "text_encode_s": 0.01 * k,
            "denoise_s": 0.4 * k,
            "decode_s": 0.02 * k,
            "encode_s": 0.001,
            "total_s": 0.5 * k,
            "peak_mem_mb": 100.0,
        },
    )


def populate(store: JobStore, out: Path) -> dict[str, Any]:
    """Batch 1: three succeeded jobs with real PNG files and two failed ones; batch 2: three
    pending jobs. Returns the ids by outcome and the worker's name."""
    rows = [("prompt", "seed", "steps", "num_images"), (FOX, 1, 4, 3), (BROKEN, 2, 4, 2)]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    submit_text(store, buf.getvalue())
    worker = LocalWorker(
        store,
        WorkerSettings(output_dir=out, burst=True, poll_seconds=0.05),
        cache=PipelineCache(),
        runner=runner,
    )
    stats = worker.run()
    assert (stats.succeeded, stats.failed) == (3, 2)
    submit_text(store, "prompt,seed,num_images\nlater job,3,3\n")
    return {
        "succeeded": [1, 2, 3],
        "failed": [4, 5],
        "pending": [6, 7, 8],
        "worker": worker.identity.name,
    }


@pytest.fixture
def populated(store: JobStore, tmp_path: Path) -> dict[str, Any]:
    return populate(store, tmp_path / "out")


_NUMBERS = itertools.count(1000)


def add_attempt(store: JobStore, **values: Any) -> None:
    """An attempt row written directly, for windows and groups a real worker would take
    minutes to produce."""
    row = {
        "job_id": 1,
        "batch_id": 1,
        "number": next(_NUMBERS),  # attempt numbers are unique per job
        "status": "succeeded",
        "worker": "w",
        "host": "h",
        "started_at": time.time() - 1,
        "finished_at": time.time(),
        "total_s": 1.0,
        "error": None,
        **values,
    }
    cols = ", ".join(row)
    with store.engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO attempts ({cols}) VALUES ({', '.join(':' + c for c in row)})"),
            row,
        )


# -- helpers -------------------------------------------------------------------------------------


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    assert summarize([None, 2.0, 4.0]) == {"n": 2, "mean": 3.0, "p50": 3.0, "p95": 3.9}


def test_lease_tokens_do_not_split_failure_groups() -> None:
    assert error_key("lease expired: worker w1/0a1b2c3d stopped renewing it") == (
        "lease expired: worker w1 stopped renewing it"
    )
    assert error_key("OSError: /data/0a1b2c3d missing") == "OSError: /data/0a1b2c3d missing"
    assert error_key(None) == error_key("") == "(no error text)"


# -- the queries ---------------------------------------------------------------------------------


def test_overview_numbers_match_the_work_done(store: JobStore, populated: dict[str, Any]) -> None:
    data = overview(store)
    assert data["counts"] == {
        "pending": 3,
        "queued": 0,
        "running": 0,
        "succeeded": 3,
        "failed": 2,
        "cancelled": 0,
    }
    assert data["total"] == 8
    assert data["progress"]["done"] == 5 and data["progress"]["remaining"] == 3
    assert data["progress"]["fraction"] == pytest.approx(5 / 8)
    t = data["throughput"]
    assert t["images"] == 3 and t["failed_attempts"] == 2 and t["images_per_min"] > 0
    assert data["progress"]["eta_s"] == pytest.approx(3 * 60 / t["images_per_min"])
    # batch 1 is finished (ETA 0), batch 2 has not started (no rate, no ETA)
    b1, b2 = data["batches"]
    assert (b1["done"], b1["remaining"], b1["eta_s"], b1["counts"]["failed"]) == (5, 0, 0.0, 2)
    assert (b2["jobs"], b2["remaining"], b2["eta_s"], b2["images_per_min"]) == (3, 3, None, 0.0)
    # stage timings: jobs 1-3 took 0.5, 1.0, 1.5 s with 4 steps each
    assert data["stages_n"] == 3 and data["timings"]["n"] == 3
    st = data["stages"]
    assert st["total_s"]["p50"] == pytest.approx(1.0)
    assert st["total_s"]["p95"] == pytest.approx(1.45)
    assert st["denoise_per_step_s"]["p50"] == pytest.approx(0.8 / 4)
    assert st["text_encode_s"]["mean"] == pytest.approx(0.02)
    assert st["decode_s"]["p95"] == pytest.approx(0.058)
    (w,) = data["workers"]
    assert w["name"] == populated["worker"] and w["transport"] == "local"
    assert (w["jobs_done"], w["jobs_failed"], w["recent_images"]) == (3, 2, 3)
    assert w["mean_s"] == pytest.approx(1.0) and w["p95_s"] == pytest.approx(1.45)
    assert w["recent_failed_attempts"] == 2
    (f,) = data["failures"]
    assert f["error"] == INPUT_ERROR
    assert (f["attempts"], f["jobs"], f["job_ids"]) == (2, 2, [5, 4])
    assert [s["job_id"] for s in data["slowest"]] == [3, 2, 1]
    assert data["slowest"][0]["prompt"] == FOX and data["slowest"][0]["steps"] == 4
    # one JSON document, as `status --json` prints it
    assert json.loads(json.dumps(data)) == data


def test_overview_of_one_batch(store: JobStore, populated: dict[str, Any]) -> None:
    data = overview(store, 2)
    assert data["batch"] == 2 and data["total"] == 3 and data["counts"]["pending"] == 3
    assert [b["id"] for b in data["batches"]] == [2]
    assert data["stages_n"] == 0 and data["failures"] == [] and data["slowest"] == []
    assert data["throughput"]["images"] == 0 and data["progress"]["eta_s"] is None
    assert overview(store, 1)["failures"][0]["jobs"] == 2


def test_throughput_counts_only_the_window(store: JobStore) -> None:
    submit_text(store, "prompt,num_images\na,3\n")
    now = time.time()
    # 30 images in the last 5 minutes, work having started 5 minutes ago: 6/min
    for i in range(30):
        add_attempt(store, started_at=now - 300, finished_at=now - i * 10)
    add_attempt(store, started_at=now - 4000, finished_at=now - 3600)  # outside the window
    add_attempt(store, status="failed", finished_at=now - 5, error="x")
    add_attempt(store, status="lost", finished_at=now - 5, error="y")
    add_attempt(store, status="failed", finished_at=now - 3600, error="old")
    rate = store.measure_throughput(600, now=now)
    assert rate["images"] == 30 and rate["failed_attempts"] == 2
    assert rate["images_per_min"] == pytest.approx(6.0)
    assert rate["by_batch"][1]["images"] == 30
    # a window entirely busy: the rate is over the whole window
    assert store.measure_throughput(59.5, now=now)["images_per_min"] == pytest.approx(6 * 60 / 59.5)
    assert store.measure_throughput(600, now=now + 7200)["images"] == 0


def test_failure_groups_window_and_examples(store: JobStore) -> None:
    submit_text(store, "prompt,num_images\na,8\n")
    t = time.time()
    for job in range(1, 8):
        add_attempt(store, job_id=job, status="failed", error="OOM", finished_at=t + job)
    add_attempt(
        store, job_id=8, status="lost", error="lease expired: worker w/deadbeef stopped renewing it"
    )
    add_attempt(
        store, job_id=8, status="lost", error="lease expired: worker w/0badf00d stopped renewing it"
    )
    add_attempt(store, job_id=8, status="succeeded")
    groups = store.group_failures(examples=3)
    assert [(g["error"], g["attempts"], g["jobs"], g["lost"]) for g in groups] == [
        ("OOM", 7, 7, 0),
        ("lease expired: worker w stopped renewing it", 2, 1, 2),
    ]
    assert groups[0]["job_ids"] == [7, 6, 5] and groups[0]["last_seen"] == pytest.approx(t + 7)
    # the window: only the latest 3 attempts of each kind
    assert [g["attempts"] for g in store.group_failures(window=3)] == [3, 2]
    assert store.group_failures(batch_id=2) == []


def test_failures_group_alike_in_python_sql_and_the_view(store: JobStore) -> None:
    errors = [
        "lease expired: worker vm:1:ab/0a1b2c3d stopped renewing it",
        "lease expired: worker vm:1:ab/ffff0000 stopped renewing it",
        "lease expired: worker a/b/12345678 stopped renewing it",
        "lease expired: worker w/NOTHEX00 stopped renewing it",
        "",
        None,
        "OOM",
    ]
    submit_text(store, f"prompt,num_images\na,{len(errors)}\n")
    for job, error in enumerate(errors, 1):
        add_attempt(store, job_id=job, status="lost", error=error)
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE jobs SET status = 'failed', last_error = :e, finished_at = 1 WHERE id = :j"
                ),
                {"e": error, "j": job},
            )
    expected: dict[str, set[int]] = {}
    for job, error in enumerate(errors, 1):
        expected.setdefault(error_key(error), set()).add(job)
    assert len(expected) == 5  # two tokens of one worker, and no text at all, are one each
    groups = store.group_failures()
    assert {g["error"]: set(g["job_ids"]) for g in groups} == expected
    with store.engine.connect() as conn:
        view = dict(conn.execute(text("SELECT error, jobs FROM v_failures")).all())
    assert view == {k: len(v) for k, v in expected.items()}
    for key, jobs in expected.items():
        assert store.list_failed_job_ids(error=key) == sorted(jobs)


def test_worker_stats_only_recent_workers(store: JobStore) -> None:
    submit_text(store, "prompt\na\n")
    now = time.time()
    base = {
        "transport": "rq",
        "host": "mac",
        "pid": 1,
        "backend": "diffusers",
        "device": "mps",
        "model": "tiny",
        "state": "idle",
        "current_job": None,
        "jobs_done": 4,
        "jobs_failed": 1,
        "busy_s": 8.0,
        "started_at": now - 100,
    }
    store.upsert_workers(
        [
            {**base, "name": "new", "last_seen": now},
            {**base, "name": "old", "last_seen": now - 90_000},
        ]
    )
    for s in (1.0, 2.0, 3.0, 10.0):
        add_attempt(store, worker="new", total_s=s)
    add_attempt(store, worker="new", status="lost", error="gone")
    (w,) = store.read_worker_stats()
    assert w["name"] == "new" and w["s_per_image"] == 2.0
    assert (w["recent_images"], w["mean_s"], w["recent_failed_attempts"]) == (4, 4.0, 1)
    assert w["p95_s"] == pytest.approx(8.95)
    assert [w["name"] for w in store.read_worker_stats(seen_within=None)] == ["new", "old"]
    assert store.read_worker_stats(seen_within=None)[1]["mean_s"] is None


def test_images_and_failed_jobs(store: JobStore, populated: dict[str, Any], tmp_path: Path) -> None:
    images = store.list_recent_images()
    assert [i["id"] for i in images] == [3, 2, 1]
    assert images[0]["prompt"] == FOX and Path(images[0]["output_path"]).is_file()
    assert [i["id"] for i in store.list_recent_images(limit=2, offset=1)] == [2, 1]
    assert store.find_image_file(1) == str(tmp_path / "out" / "1" / "000001.png")
    assert store.find_image_file(4) is None  # failed: no image to serve
    assert store.find_image_file(6) is None and store.find_image_file(999) is None
    failed = store.list_failed_jobs()
    assert [j["id"] for j in failed] == [5, 4] and failed[0]["last_error"] == INPUT_ERROR
    assert store.list_failed_job_ids() == [4, 5]
    assert store.list_failed_job_ids(error=INPUT_ERROR) == [4, 5]
    assert (
        store.list_failed_job_ids(error="other") == []
        and store.list_failed_job_ids(batch_id=2) == []
    )


def _plans(store: JobStore, calls: list[Callable[[], Any]]) -> list[str]:
    """The query plans of every statement the calls run."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_a: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, params))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        for call in calls:
            call()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    plans = []
    with store.engine.connect() as conn:
        for statement, params in seen:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
            plans.append(statement + "\n  " + "\n  ".join(r[-1] for r in rows))
    return plans


def test_dashboard_queries_never_scan_jobs_or_attempts(
    store: JobStore, populated: dict[str, Any]
) -> None:
    plans = _plans(
        store,
        [
            lambda: overview(store),
            lambda: overview(store, 1),
            store.list_failed_jobs,
            store.list_recent_images,
            lambda: store.find_image_file(1),
            lambda: store.get_job(1),
        ],
    )
    assert len(plans) > 10
    for plan in plans:
        for line in plan.splitlines()[1:]:
            step = line.strip()
            if re.match(r"SCAN (jobs|attempts|j|a)\b", step):
                assert "INDEX" in step, plan
    joined = "\n".join(plans)
    assert "ix_attempts_status_finished_at" in joined
    assert "ix_jobs_status_finished_at" in joined


# -- views and migration -------------------------------------------------------------------------


def test_views_answer_the_same(store: JobStore, populated: dict[str, Any], db_url: str) -> None:
    with store.engine.connect() as conn:
        progress = (
            conn.execute(text("SELECT * FROM v_batch_progress ORDER BY batch_id")).mappings().all()
        )
        workers = conn.execute(text("SELECT * FROM v_worker_stats")).mappings().all()
        failures = conn.execute(text("SELECT * FROM v_failures")).mappings().all()
        timings = conn.execute(text("SELECT * FROM v_job_timings ORDER BY job_id")).mappings().all()
    assert [
        (p["batch_id"], p["jobs"], p["succeeded"], p["failed"], p["pending"], p["done"])
        for p in progress
    ] == [
        (1, 5, 3, 2, 0, 5),
        (2, 3, 0, 0, 3, 0),
    ]
    assert progress[0]["percent_done"] == 100.0 and progress[1]["percent_done"] == 0.0
    (w,) = workers
    assert (w["name"], w["jobs_done"], w["jobs_failed"]) == (populated["worker"], 3, 2)
    assert w["s_per_image"] == pytest.approx(1.0) and 0 <= w["seen_s_ago"] < 60
    assert [(f["error"], f["jobs"], f["first_job_id"], f["last_job_id"]) for f in failures] == [
        (INPUT_ERROR, 2, 4, 5)
    ]
    assert [t["job_id"] for t in timings] == [1, 2, 3]
    assert timings[1]["denoise_per_step_s"] == pytest.approx(0.8 / 4)
    assert timings[0]["prompt"] == FOX and timings[0]["output_path"].endswith("000001.png")


def test_downgrade_drops_the_views_and_indexes(db_url: str) -> None:
    def names(kind: str) -> set[str]:
        from sqlalchemy import create_engine

        engine = create_engine(db_url)
        with engine.connect() as conn:
            out = set(
                conn.execute(
                    text("SELECT name FROM sqlite_master WHERE type = :k"), {"k": kind}
                ).scalars()
            )
        engine.dispose()
        return out

    upgrade(db_url)
    views = {"v_batch_progress", "v_worker_stats", "v_failures", "v_job_timings"}
    indexes = {"ix_jobs_status_finished_at", "ix_attempts_status_finished_at"}
    assert views <= names("view") and indexes <= names("index")
    downgrade(db_url, "0002")
    assert not views & names("view") and not indexes & names("index")
    upgrade(db_url)
    assert views <= names("view")


# -- rendering and the status command -----------------------------------------------------------


def test_text_and_rich_views(store: JobStore, populated: dict[str, Any]) -> None:
    from rich.console import Console

    data = overview(store)
    plain = render_text(data)
    assert populated["worker"] in plain and "local" in plain
    assert "5/8 done (62.5%), 3 to go" in plain and INPUT_ERROR in plain
    console = Console(file=io.StringIO(), width=240, record=True, color_system=None)
    console.print(render_rich(data))
    out = console.export_text()
    for expected in (populated["worker"], "Workers", "Batches", "denoise / step", "62.5%", "4bit"):
        assert expected in out, expected


@pytest.fixture
def run_cli(db_url: str) -> Iterator[Callable[..., Any]]:
    def run(*args: str) -> Any:
        result = CliRunner().invoke(main, ["--db", db_url, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    yield run


def test_status_command_json_and_text(
    store: JobStore, populated: dict[str, Any], run_cli: Callable[..., Any]
) -> None:
    data = json.loads(run_cli("status", "--json").stdout)
    for key in (
        "generated_at", "batch", "counts", "total", "progress", "throughput", "timings",
        "stages", "stages_n", "workers", "batches", "failures", "slowest",
    ):  # fmt: skip
        assert key in data, key
    assert data["counts"]["succeeded"] == 3 and data["total"] == 8
    assert json.loads(run_cli("status", "--json", "--batch", "2").stdout)["total"] == 3
    text_out = run_cli("status").stdout
    assert populated["worker"] in text_out and "Batches:" in text_out


def test_status_watch_refreshes_until_ctrl_c(
    store: JobStore,
    populated: dict[str, Any],
    run_cli: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import orchestrator.cli.dashboard as dash

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt
        store.cancel([6])  # the next refresh shows it

    monkeypatch.setattr(dash.time, "sleep", sleep)
    lines = run_cli("status", "--json", "--watch", "0.5").stdout.splitlines()
    assert sleeps == [0.5, 0.5, 0.5] and len(lines) == 3
    docs = [json.loads(line) for line in lines]
    assert [d["counts"]["cancelled"] for d in docs] == [0, 1, 1]
    # no value: the default interval; plain text blocks
    sleeps.clear()
    out = run_cli("status", "--watch").stdout
    assert sleeps == [dash.DEFAULT_WATCH_SECONDS] * 3 and out.count("Jobs (all batches):") == 3


def test_status_watch_on_a_terminal_uses_rich_live(
    store: JobStore, populated: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    import orchestrator.cli.dashboard as dash

    buf = io.StringIO()
    monkeypatch.setattr(
        dash, "_rich_console", lambda: Console(file=buf, force_terminal=True, width=200)
    )
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(dash.time, "sleep", sleep)
    with pytest.raises(KeyboardInterrupt):
        dash._watch_rich(store, None, 1.0)
    assert calls == [1.0, 1.0] and populated["worker"] in buf.getvalue()
