from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text

from orchestrator.database import (
    MIGRATIONS_DIR,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from tests.conftest import submit_text


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def test_upgrade_on_an_empty_database_then_no_drift(db_url: str) -> None:
    assert upgrade(db_url) == head_revision()
    # `alembic check` raises when the models and the migrated schema disagree.
    command.check(alembic_config(db_url))


def test_downgrade_and_upgrade_round_trip(db_url: str) -> None:
    upgrade(db_url)
    downgrade(db_url, "base")
    engine = create_engine(db_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(db_url)
    assert current_revision(engine) == head_revision()
    assert {"batches", "jobs", "attempts", "job_counts"} <= set(inspect(engine).get_table_names())


def test_claim_path_uses_its_index(store, db_url: str) -> None:  # type: ignore[no-untyped-def]
    submit_text(store, "prompt\na\nb\n")
    with create_engine(db_url).connect() as conn:
        plan = " ".join(
            row[-1]
            for row in conn.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE status = 'pending' "
                    "ORDER BY priority DESC, id LIMIT 1"
                )
            )
        )
    assert "ix_jobs_claim" in plan
    assert "TEMP B-TREE" not in plan


def test_commands_migrate_a_fresh_database_themselves(tmp_path: Path) -> None:
    from orchestrator.database import database_url, open_engine

    url = database_url(str(tmp_path / "new.db"))
    engine = open_engine(url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_pause_columns_upgrade_and_downgrade_with_data(db_url: str) -> None:
    from orchestrator.database import open_engine
    from orchestrator.store import JobStore

    upgrade(db_url, "0004")
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO batches (id, name, rows, job_count, duplicates, defaults_json, "
                "created_at) VALUES (1, 'old', 0, 0, 0, '{}', 0)"
            )
        )
    upgrade(db_url, "0005")
    assert "paused_at" in {c["name"] for c in inspect(engine).get_columns("batches")}
    assert "queue_state" in inspect(engine).get_table_names()
    upgrade(db_url)
    store = JobStore(open_engine(db_url))
    assert store.pause(1) and store.pause()  # a batch from before 0005 can be paused
    store.engine.dispose()
    downgrade(db_url, "0004")
    engine = create_engine(db_url)
    assert "paused_at" not in {c["name"] for c in inspect(engine).get_columns("batches")}
    assert "queue_state" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM batches")).scalars().all() == ["old"]
    upgrade(db_url)
    assert current_revision(engine) == head_revision()


def test_quality_gate_columns_upgrade_and_downgrade_with_data(db_url: str) -> None:
    from orchestrator.database import open_engine
    from orchestrator.store import JobStore

    upgrade(db_url, "0006")
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO batches (id, name, rows, job_count, duplicates, defaults_json, "
                "created_at) VALUES (1, 'old', 1, 1, 0, '{}', 0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, batch_id, line, image_index, fingerprint, status, "
                "priority, prompt, negative_prompt, seed, steps, guidance_scale, width, "
                "height, scheduler, model, quantization, tags, output_name, attempts, "
                "max_attempts, created_at) VALUES (1, 1, 2, 0, 'f', 'succeeded', 0, 'p', '', "
                "7, 20, 7.5, 64, 64, 'dpmpp_2m', 'tiny', 'fp16', '', '', 1, 3, 0)"
            )
        )
    upgrade(db_url)
    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert {"min_score", "quality_tries", "score", "image_seed", "judge"} <= columns
    assert "scores_json" in {c["name"] for c in inspect(engine).get_columns("attempts")}
    store = JobStore(open_engine(db_url))
    old = store.get_job(1)  # a job from before the gate: none, and no verdict
    assert (old["min_score"], old["score"], old["image_seed"]) == (None, None, None)
    submit_text(store, "prompt,min_score\ngated,0.5\n")
    assert store.summarize_quality() == [
        {
            "batch_id": 2,
            "gated": 1,
            "passed": 0,
            "failed_gate": 0,
            "judged": 0,
            "mean_score": None,
            "min_score_low": 0.5,
            "min_score_high": 0.5,
        }
    ]
    with store.engine.connect() as conn:
        plan = " ".join(
            row[-1]
            for row in conn.execute(
                text("EXPLAIN QUERY PLAN SELECT count(*) FROM jobs WHERE min_score IS NOT NULL")
            )
        )
    assert "ix_jobs_gated" in plan  # status reads gated jobs only
    store.engine.dispose()
    downgrade(db_url, "0006")
    engine = create_engine(db_url)
    columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert not {"min_score", "quality_tries", "score", "image_seed", "judge"} & columns
    assert "scores_json" not in {c["name"] for c in inspect(engine).get_columns("attempts")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT prompt FROM jobs ORDER BY id")).scalars().all() == [
            "p",
            "gated",
        ]
        # the count triggers survived: plain ADD and DROP COLUMNs, no table rebuild
        assert conn.execute(text("SELECT sum(n) FROM job_counts")).scalar() == 2
    upgrade(db_url)
    assert current_revision(engine) == head_revision()
