"""The quality gate through the real task and store: a local worker runs gated jobs on a
pipeline whose image shows its seed, judged by small scripts that score by that seed; an RQ
worker and a coordinator carry the same fields; the verdict is recorded, fenced, reported,
exported and shown."""

from __future__ import annotations

import io
import json
import multiprocessing
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import text

from contract import protocol as proto
from contract.errors import JobInterrupted
from orchestrator.config import WorkerSettings
from orchestrator.export import export_dataset
from orchestrator.status import overview, render_text
from orchestrator.store import JobStore
from orchestrator.transports.coordinator import Coordinator, CoordinatorSettings
from orchestrator.transports.local import LocalWorker
from tests.conftest import submit_text, worker
from tests.fake_quality import (
    ALWAYS_LOW,
    ODD_SEEDS_PASS,
    SeedBackend,
    cache_with,
    gated_rq_worker,
    judge_command,
    judged_seeds,
    seed_of,
)
from tests.redis_server import RedisServer
from workers.metadata import read_png_metadata
from workers.quality import CommandJudge, candidate_seed
from workers.task import run_job

SCENE = "a large red circle on a black background"


def run_local(store: JobStore, tmp_path: Path, cache: Any, *, no_backoff: bool = True) -> Any:
    """A burst local worker with ``cache``; failures are retried at once (no backoff)."""
    if no_backoff:
        fail = store.fail

        def fail_now(*a: Any, **kw: Any) -> str | None:
            status = fail(*a, **kw)
            with store.engine.begin() as conn:
                conn.execute(text("UPDATE jobs SET not_before = NULL"))
            return status

        store.fail = fail_now  # type: ignore[method-assign]
    settings = WorkerSettings(output_dir=tmp_path / "out", burst=True, poll_seconds=0.05)
    return LocalWorker(store, settings, cache=cache).run()


def scores_of(job: dict[str, Any]) -> list[Any]:
    return [json.loads(a["scores_json"] or "null") for a in job["attempt_rows"]]


def test_an_image_under_the_gate_is_made_again_with_the_next_seed(
    store: JobStore, tmp_path: Path
) -> None:
    judge = judge_command(tmp_path, ODD_SEEDS_PASS)
    backend = SeedBackend()
    submit_text(store, f"prompt,seed,min_score\n{SCENE},100,0.5\n")
    stats = run_local(store, tmp_path, cache_with(backend, CommandJudge(judge)))

    second = candidate_seed(100, 1)
    assert second % 2 == 1  # an odd seed: the judge passes it
    assert stats.succeeded == 1
    assert backend.calls == [100, second]
    assert judged_seeds(tmp_path) == [100, second]
    job = store.get_job(1)
    assert (job["status"], job["seed"], job["min_score"], job["quality_tries"]) == (
        "succeeded",
        100,
        0.5,
        3,
    )
    assert (job["score"], job["image_seed"], job["judge"]) == (0.9, second, sys.executable)
    assert scores_of(job) == [[[100, 0.3], [second, 0.9]]]

    # the published image is the one kept, and its metadata names the seed that made it
    png = Path(job["output_path"]).read_bytes()
    with Image.open(io.BytesIO(png)) as im:
        assert seed_of(im) == second
    meta = read_png_metadata(png)
    assert f"Seed: {second}," in meta["parameters"]
    assert meta["meta"]["job"]["seed"] == second
    # it regenerates without its gate: the job recorded in it has none
    assert "min_score" not in meta["meta"]["job"]
    assert "quality_tries" not in meta["meta"]["job"]
    quality = meta["meta"]["quality"]
    assert (quality["job_seed"], quality["score"], quality["judge"]) == (100, 0.9, sys.executable)
    assert quality["scores"] == [[100, 0.3], [second, 0.9]]

    # reported: status's quality line, jobs list --below, the export
    data = overview(store)
    assert data["quality"] == [
        {
            "batch_id": 1,
            "gated": 1,
            "passed": 1,
            "failed_gate": 0,
            "judged": 1,
            "mean_score": 0.9,
            "min_score_low": 0.5,
            "min_score_high": 0.5,
        }
    ]
    assert (
        "Quality gate, batch 1 (min score 0.5): 1/1 judged, 1 passed, 0 failed the gate, "
        "mean score 0.9"
    ) in render_text(data).splitlines()
    assert [j["id"] for j in store.list_jobs(below=0.95)] == [1]
    assert store.list_jobs(below=0.9) == []
    export_dataset(store, tmp_path / "ds", "imagefolder")
    row = json.loads((tmp_path / "ds" / "train" / "metadata.jsonl").read_text())
    assert (row["seed"], row["score"], row["image_seed"]) == (100, 0.9, second)


def test_a_job_whose_every_seed_fails_fails_and_a_retry_goes_on_to_fresh_seeds(
    store: JobStore, tmp_path: Path
) -> None:
    judge = judge_command(tmp_path, ALWAYS_LOW)
    backend = SeedBackend()
    submit_text(store, f"prompt,seed,min_score,quality_tries\n{SCENE},100,0.5,2\n", max_attempts=2)
    cache = cache_with(backend, CommandJudge(judge))
    stats = run_local(store, tmp_path, cache)

    seeds = [candidate_seed(100, n) for n in range(6)]
    assert stats.failed == 1
    assert backend.calls == seeds[:4]
    job = store.get_job(1)
    assert (job["status"], job["attempts"], job["score"], job["image_seed"]) == (
        "failed",
        2,
        None,
        None,
    )
    assert job["last_error"] == (
        f"QualityGateFailed: best score 0.2 < 0.5 after 2 seeds ({seeds[2]}, {seeds[3]})"
    )
    assert [a["error"] for a in job["attempt_rows"]] == [
        f"QualityGateFailed: best score 0.2 < 0.5 after 2 seeds ({seeds[0]}, {seeds[1]})",
        job["last_error"],
    ]
    assert scores_of(job) == [
        [[seeds[0], 0.2], [seeds[1], 0.2]],
        [[seeds[2], 0.2], [seeds[3], 0.2]],
    ]
    assert overview(store)["quality"][0] | {"mean_score": None} == {
        "batch_id": 1,
        "gated": 1,
        "passed": 0,
        "failed_gate": 1,
        "judged": 1,
        "mean_score": None,
        "min_score_low": 0.5,
        "min_score_high": 0.5,
    }
    assert not list((tmp_path / "out").rglob("*.png"))  # no image of a failed gate

    # `jobs retry`: a fresh attempt budget, and seeds no attempt has tried
    assert store.retry([1]) == 1
    run_local(store, tmp_path, cache, no_backoff=False)
    assert backend.calls == seeds[:4] + seeds[4:6] + [candidate_seed(100, n) for n in (6, 7)]
    assert len(set(backend.calls)) == len(backend.calls)


def test_attempts_that_never_judged_an_image_keep_the_gates_first_seed(
    store: JobStore, tmp_path: Path
) -> None:
    """A shutdown, a job Redis lost before a worker took it, and a worker that died each
    used up an attempt number and once moved the seeds on (a pause and resume made seed
    3668340018 of seed 7's image); only a failed gate moves them now."""
    submit_text(store, f"prompt,seed,min_score,quality_tries\n{SCENE},101,0.5,2\n", max_attempts=5)
    rounds = []
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    rounds.append(claim.job["gate_round"])
    store.release(claim)  # the worker shut down before it ran
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    rounds.append(claim.job["gate_round"])
    store.lose(claim, "Redis lost the job", count_attempt=False)  # never started
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    rounds.append(claim.job["gate_round"])
    store.lose(claim, "worker w1 died")  # ran, and its worker died
    assert [a["number"] for a in store.get_job(1)["attempt_rows"]] == [1, 2, 3]

    backend = SeedBackend()
    run_local(
        store, tmp_path, cache_with(backend, CommandJudge(judge_command(tmp_path, ODD_SEEDS_PASS)))
    )
    job = store.get_job(1)
    assert rounds == [0, 0, 0]
    assert backend.calls == [101]  # its own seed, as if nothing had happened before it
    assert (job["status"], job["image_seed"], job["attempt_rows"][-1]["number"]) == (
        "succeeded",
        101,
        4,
    )


def test_a_failed_gate_moves_the_next_attempts_seeds_on(store: JobStore) -> None:
    submit_text(store, f"prompt,seed,min_score,quality_tries\n{SCENE},100,0.5,2\n", max_attempts=5)

    def next_round() -> int:
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET not_before = NULL"))  # no backoff
        claim = store.claim(worker(), lease_seconds=30)
        assert claim is not None
        claims.append(claim)
        return int(claim.job["gate_round"])

    claims: list[Any] = []
    assert next_round() == 0
    store.fail(claims[-1], "QualityGateFailed: best score 0.2 < 0.5", scores=[(100, 0.2)])
    assert next_round() == 1
    store.release(claims[-1])  # a shutdown
    assert next_round() == 1
    store.fail(claims[-1], "JudgeError: judge exited with status 2")  # judged nothing
    assert next_round() == 1
    store.fail(claims[-1], "QualityGateFailed: best score 0.3 < 0.5", scores=[(7, 0.3)])
    assert next_round() == 2


def test_an_ungated_payload_carries_no_gate_round(store: JobStore) -> None:
    submit_text(store, "prompt,seed\nplain,5\n")
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None and "gate_round" not in claim.job


def test_the_built_in_judge_refuses_a_prompt_it_cannot_read_before_any_work(
    store: JobStore, tmp_path: Path
) -> None:
    backend = SeedBackend()
    submit_text(store, "prompt,min_score\na lighthouse at dusk,0.5\n", max_attempts=3)
    stats = run_local(store, tmp_path, cache_with(backend))  # no --judge: the built-in one
    assert stats.failed == 1
    job = store.get_job(1)
    assert (job["status"], job["attempts"]) == ("failed", 1)  # an input error: no retries
    assert job["last_error"] == (
        "JobInputError: the built-in judge only knows the scenes world (prompts like 'two "
        "small yellow squares on a black background'), not 'a lighthouse at dusk'; give the "
        "worker --judge CMD"
    )
    assert backend.calls == []


def test_the_built_in_judge_passes_an_image_that_shows_its_prompt(
    store: JobStore, tmp_path: Path
) -> None:
    backend = SeedBackend(render_scene=True)
    submit_text(store, f"prompt,seed,min_adherence\n{SCENE},5,0.9\n")
    assert run_local(store, tmp_path, cache_with(backend)).succeeded == 1
    job = store.get_job(1)
    assert (job["score"], job["image_seed"], job["judge"]) == (1.0, 5, "builtin")
    assert backend.calls == [5]


def test_a_judge_command_that_fails_fails_the_attempt_and_the_job_after_its_attempts(
    store: JobStore, tmp_path: Path
) -> None:
    judge = judge_command(tmp_path, "print('no model here', file=sys.stderr); sys.exit(2)")
    backend = SeedBackend()
    submit_text(store, f"prompt,seed,min_score\n{SCENE},100,0.5\n", max_attempts=2)
    run_local(store, tmp_path, cache_with(backend, CommandJudge(judge)))
    job = store.get_job(1)
    assert (job["status"], job["attempts"]) == ("failed", 2)
    assert job["last_error"] == (
        f"JudgeError: judge {sys.executable!r} exited with status 2: no model here"
    )
    # a broken judge ends its attempt at the first image; it judged nothing, so the next
    # attempt tries the same seed (only a failed gate moves the seeds on)
    assert backend.calls == [100, 100]


def test_an_ungated_job_is_sent_and_made_exactly_as_before(store: JobStore, tmp_path: Path) -> None:
    submit_text(store, "prompt,seed\na cat,100\n")
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None
    assert "min_score" not in claim.job and "quality_tries" not in claim.job
    backend = SeedBackend()
    out = run_job(claim.job, cache_with(backend))
    assert backend.calls == [100]
    assert not {"score", "image_seed", "judge", "scores"} & set(out.result)
    meta = read_png_metadata(out.png)["meta"]
    assert "quality" not in meta
    assert set(meta["job"]) == set(claim.job) - {"attempt"}


def test_a_stop_between_tries_interrupts_the_job(tmp_path: Path) -> None:
    backend = SeedBackend()
    cache = cache_with(backend, CommandJudge(judge_command(tmp_path, ALWAYS_LOW)))
    job = {**_job(), "min_score": 0.5, "quality_tries": 3, "attempt": 1}
    with pytest.raises(JobInterrupted):
        run_job(job, cache, should_stop=lambda: len(backend.calls) >= 1)
    assert backend.calls == [100]


def _job() -> dict[str, Any]:
    from tests.conftest import sample_job

    return sample_job(prompt=SCENE, seed=100)


def test_a_superseded_attempt_never_writes_its_verdict(store: JobStore) -> None:
    submit_text(store, f"prompt,seed,min_score\n{SCENE},100,0.5\n")
    first = store.claim(worker("w1"), lease_seconds=30)
    assert first is not None and first.job["min_score"] == 0.5
    # w1's lease runs out and w2 takes the job over
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET lease_expires_at = 0"))
    second = store.claim(worker("w2"), lease_seconds=30)
    assert second is not None and second.job_id == first.job_id
    verdict = {"score": 0.7, "image_seed": 5, "judge": "late", "scores": [[5, 0.7]]}
    assert not store.complete(first, "/x/1.png", "a" * 64, {"total_s": 1.0, **verdict})
    job = store.get_job(1)
    assert (job["score"], job["image_seed"], job["judge"]) == (None, None, None)
    assert job["attempt_rows"][0]["scores_json"] is None
    verdict = {"score": 0.9, "image_seed": 7, "judge": "mine", "scores": [[6, 0.1], [7, 0.9]]}
    assert store.complete(second, "/x/1.png", "b" * 64, {"total_s": 1.0, **verdict})
    job = store.get_job(1)
    assert (job["status"], job["score"], job["image_seed"], job["judge"]) == (
        "succeeded",
        0.9,
        7,
        "mine",
    )
    assert scores_of(job) == [None, [[6, 0.1], [7, 0.9]]]
    # an image found lost is made (and judged) again
    assert store.mark_image_lost(1, "gone")
    assert store.get_job(1)["score"] is None


def test_the_dashboard_job_page_shows_the_verdict(store: JobStore, tmp_path: Path) -> None:
    from tests.integration.test_dashboard_pages import Client

    judge = judge_command(tmp_path, ODD_SEEDS_PASS)
    submit_text(store, f"prompt,seed,min_score\n{SCENE},100,0.5\n")
    run_local(store, tmp_path, cache_with(SeedBackend(), CommandJudge(judge)))
    page = Client(store).page("/jobs/1")
    second = candidate_seed(100, 1)
    assert "score at least 0.5, up to 3 seeds an attempt" in page
    assert f'<dd id="image-seed">{second}</dd>' in page
    assert '<dd id="score">0.9 <span class="muted">(judge ' in page
    assert f"seeds tried: 100 (0.3), {second} (0.9)" in page
    api = Client(store).api("/api/jobs/1")
    assert api["attempt_rows"][0]["scores"] == [[100, 0.3], [second, 0.9]]


def test_the_rq_transport_carries_the_gate_and_the_verdict(
    store: JobStore, redis_server: RedisServer, tmp_path: Path
) -> None:
    judge = judge_command(tmp_path, "print(0.1 if 'never' in prompt else 0.9 if seed % 2 else 0.3)")
    submit_text(
        store,
        "prompt,seed,min_score,quality_tries\n"
        f"{SCENE},100,0.5,3\n"
        "never good enough,200,0.5,2\n"
        "ungated,300,,\n",
        max_attempts=1,
    )
    proc = multiprocessing.get_context("spawn").Process(
        target=gated_rq_worker, args=(redis_server.url, judge)
    )
    proc.start()
    try:
        settings = CoordinatorSettings(output_dir=tmp_path / "out", until_done=True, poll=0.05)
        coord = Coordinator(store, proto.connect(redis_server.url), settings)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(coord.run()))
        thread.start()
        thread.join(120)
        if thread.is_alive():
            coord.request_stop()
            thread.join()
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert result == [1]  # one job failed its gate

    second = candidate_seed(100, 1)
    passed = store.get_job(1)
    assert (passed["status"], passed["score"], passed["image_seed"], passed["judge"]) == (
        "succeeded",
        0.9,
        second,
        sys.executable,
    )
    assert scores_of(passed) == [[[100, 0.3], [second, 0.9]]]
    assert (
        f"Seed: {second},"
        in read_png_metadata(Path(passed["output_path"]).read_bytes())["parameters"]
    )

    failed = store.get_job(2)
    seeds = [candidate_seed(200, n) for n in range(2)]
    assert failed["status"] == "failed"
    assert failed["last_error"] == (
        f"QualityGateFailed: best score 0.1 < 0.5 after 2 seeds ({seeds[0]}, {seeds[1]})"
    )
    assert scores_of(failed) == [[[seeds[0], 0.1], [seeds[1], 0.1]]]

    plain = store.get_job(3)
    assert (plain["status"], plain["score"], plain["image_seed"]) == ("succeeded", None, None)
    assert sorted(judged_seeds(tmp_path)) == sorted([100, second, *seeds])
    assert store.read_dead_letters()["count"] == 0
