"""Knowing before a run that a model cannot be loaded here; and what a failing job's retry says."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from orchestrator.config import WorkerSettings
from orchestrator.events import JobEvent
from orchestrator.preflight import (
    check_models,
    looks_like_path,
    missing_local_paths,
    model_problem,
    pending_by_batch,
    pending_models,
    refusal,
)
from orchestrator.store import JobStore, backoff_seconds
from orchestrator.transports.local import LocalWorker
from tests.conftest import manifest_of, submit_text
from workers.task import PipelineCache, TaskOutput


def diffusers_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model_index.json").write_text("{}")
    return path


def fake_hub_cache(root: Path, repo: str) -> Path:
    """The layout huggingface_hub leaves after a download: refs/main and a snapshot."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("abc123")
    snapshot = repo_dir / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    return root


def test_builtin_and_local_folders(tmp_path: Path) -> None:
    assert model_problem("tiny") is None
    assert model_problem("tiny", "4bit") is None  # built on first use
    assert model_problem(str(diffusers_folder(tmp_path / "sd"))) is None
    missing = model_problem(str(tmp_path / "nope"))
    assert missing is not None and missing.startswith("no such folder on this machine")
    (tmp_path / "empty").mkdir()
    empty = model_problem(str(tmp_path / "empty"))
    assert empty is not None and "no model_index.json" in empty
    (tmp_path / "file").write_text("x")
    not_dir = model_problem(str(tmp_path / "file"))
    assert not_dir is not None and "is a file" in not_dir


def test_a_recipe_variant_must_have_been_made() -> None:
    problem = model_problem("tiny", "recipe_x")
    assert problem is not None and "no compressed variant 'recipe_x'" in problem


def test_hub_ids_offline_need_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from workers.models import hub

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(fake_hub_cache(tmp_path, "me/cached")))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # online (no network is touched: the hub's answers are stood in for)
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.setattr(hub, "exists", lambda _repo: None)  # cannot tell: the job downloads it
    assert model_problem("me/not-cached") is None
    monkeypatch.setattr(hub, "exists", lambda repo: repo == "me/there")
    assert model_problem("me/there") is None
    assert model_problem("me/cached") is None  # the cache is enough: the hub is not asked
    assert model_problem("me/gone") == (
        "not a model on the Hugging Face hub (or a private one: `hf auth login` with a token "
        "that may read it)"
    )
    assert model_problem("tiny-sdx") == (
        "not a built-in model (did you mean 'tiny-sd3'?) or a folder on this "
        "machine, and not a model on the Hugging Face hub (or a private one: `hf auth login` "
        "with a token that may read it)"
    )
    bad_id = model_problem("not a hub id!")
    assert bad_id is not None and "not a valid Hugging Face hub id" in bad_id

    # the hub's host does not answer, HF_HUB_OFFLINE unset: the cache or nothing
    monkeypatch.setattr(hub, "reachable", lambda: False)
    assert model_problem("me/cached") is None
    assert model_problem("Tiny") == (
        "not a built-in model (did you mean 'tiny'?) or a folder on this machine, and not in "
        "this machine's Hugging Face cache, and the hub cannot be reached (huggingface.co does "
        "not answer): download it where there is a network (`hf download Tiny`) or give a "
        "local diffusers folder"
    )

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_problem("me/cached") is None
    offline = model_problem("me/not-cached")
    assert offline is not None and "not in this machine's Hugging Face cache" in offline
    assert "(HF_HUB_OFFLINE=1)" in offline


def test_coreml_needs_a_converted_folder(tmp_path: Path) -> None:
    (tmp_path / "Unet.mlpackage").mkdir()
    assert model_problem(str(tmp_path), backend="coreml") is None
    problem = model_problem(str(tmp_path / "other"), backend="coreml")
    assert problem is not None and "no Core ML variant" in problem


def test_what_looks_like_a_local_path() -> None:
    for value in ("/models/sd", "./sd", "../sd", "~/models/sd", "models/sd/v1", "C:\\sd"):
        assert looks_like_path(value), value
    for value in ("tiny", "runwayml/stable-diffusion-v1-5", "sd15"):
        assert not looks_like_path(value), value


def test_problems_name_each_model_with_its_job_count(tmp_path: Path) -> None:
    counts = {
        ("tiny", "fp16"): 5,
        (str(tmp_path / "a"), "fp16"): 2,
        (str(tmp_path / "b"), "8bit"): 7,
    }
    problems = check_models(counts)
    assert [(p.model, p.jobs) for p in problems] == [
        (str(tmp_path / "b"), 7),
        (str(tmp_path / "a"), 2),
    ]
    assert str(problems[0]).startswith(f"model '{tmp_path / 'b'}' (8bit), 7 jobs: no such folder")
    assert str(problems[1]).startswith(f"model '{tmp_path / 'a'}', 2 jobs: no such folder")


def test_pending_models_is_one_row_per_model(store: JobStore) -> None:
    submit_text(store, "prompt,model,num_images\na,tiny,3\nb,./x,2\nc,./x,1\nd,me/hub,1\n")
    store.cancel([1])
    assert pending_models(store) == {("tiny", "fp16"): 2, ("./x", "fp16"): 3, ("me/hub", "fp16"): 1}


def test_paused_work_is_not_checked(store: JobStore) -> None:
    first = submit_text(store, "prompt,model\na,./x\n")
    submit_text(store, "prompt,model\nb,./y\n")
    store.pause(first.batch_id)
    assert pending_models(store) == {("./y", "fp16"): 1}
    store.pause()  # the whole queue: a run takes nothing, so nothing needs checking
    assert pending_models(store) == {}


def test_a_refusal_names_the_waiting_batches_and_the_way_out(store: JobStore) -> None:
    submit_text(store, "prompt,model\na,./gone\nb,./gone\n")
    submit_text(store, "prompt,model\nc,./gone\nd,./other\ne,tiny\n")
    waiting = pending_by_batch(store)
    counts = {key: sum(w.jobs for w in batches) for key, batches in waiting.items()}
    counts[("./gone", "fp16")] = 5  # the manifest being run has more of them than wait
    problems = check_models(counts, waiting=waiting)
    assert [str(p).split(": no such folder")[0] for p in problems] == [
        "model './gone', 5 jobs (3 waiting in batches 1 (test) and 2 (test))",
        "model './other', 1 job waiting in batch 2 (test)",
    ]
    assert refusal(problems, submitting=True) == (
        "2 models (6 jobs) cannot be loaded on this machine; nothing was submitted or run. "
        "4 of them wait in batches 1 (test) and 2 (test): `orchestrate jobs cancel --batch 1` "
        "(and --batch 2) cancels them, `orchestrate pause --batch 1` (and --batch 2) keeps them "
        "for a machine that has the model; --skip-model-check runs anyway (those jobs fail)"
    )
    assert refusal(check_models({("./gone", "fp16"): 1}), submitting=True) == (
        "1 model (1 job) cannot be loaded on this machine; nothing was submitted or run "
        "(--skip-model-check runs anyway: those jobs fail)"
    )


def test_missing_local_paths_for_submits_warning(tmp_path: Path) -> None:
    here = diffusers_folder(tmp_path / "here")
    m = manifest_of(
        f"prompt,model\na,tiny\nb,{here}\nc,./not-here\nd,./not-here\ne,me/hub\nf,~/nope/x\n"
    )
    from orchestrator.preflight import manifest_models

    assert missing_local_paths(manifest_models(m.jobs)) == [("./not-here", 2), ("~/nope/x", 1)]


# -- what a failed job's retry says, and that a missing model folder is not retried ----------


def make_worker(
    store: JobStore, tmp_path: Path, runner: Any = None, max_jobs: int | None = None
) -> LocalWorker:
    settings = WorkerSettings(
        output_dir=tmp_path / "out", burst=True, poll_seconds=0.05, max_jobs=max_jobs
    )
    kw = {} if runner is None else {"runner": runner}
    return LocalWorker(store, settings, cache=PipelineCache(), **kw)


def test_a_missing_model_folder_fails_at_once_through_the_real_task(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(store, f"prompt,model\na,{tmp_path / 'no-such-model'}\n", max_attempts=3)
    events: list[JobEvent] = []
    w = make_worker(store, tmp_path)  # the real run_job: the backend looks for the model
    w.on_event = events.append
    assert w.run().failed == 1
    job = store.get_job(1)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "JobInputError" in job["attempt_rows"][0]["error"]
    assert [(e.status, e.retry_in) for e in events] == [("failed", None)]


def test_the_retry_line_says_the_backoff_the_store_applies(store: JobStore, tmp_path: Path) -> None:
    submit_text(store, "prompt\na\n", max_attempts=3)
    events: list[JobEvent] = []

    def boom(job: dict[str, Any], _cache: PipelineCache, _stop: Callable[[], bool]) -> TaskOutput:
        raise RuntimeError("out of memory")

    w = make_worker(store, tmp_path, boom, max_jobs=1)  # one try, then look at what it said
    w.on_event = events.append
    before = time.time()
    w.run()
    after = time.time()
    assert [e.status for e in events] == ["retrying"]
    assert events[0].retry_in == backoff_seconds(1) == 2.0
    with store.engine.connect() as conn:
        not_before = conn.execute(text("SELECT not_before FROM jobs WHERE id = 1")).scalar_one()
    # the job really waits what the line says (from the moment its failure was recorded)
    assert before + events[0].retry_in <= not_before <= after + events[0].retry_in


def test_the_device_asked_for_must_be_here() -> None:
    import torch

    from orchestrator.preflight import device_problem

    assert device_problem("auto") is None and device_problem("cpu") is None
    cuda = device_problem("cuda")
    assert (cuda is None) == torch.cuda.is_available()
    if cuda is not None:
        assert cuda == "device 'cuda' was asked for but torch sees no CUDA GPU"


def test_a_home_folder_of_no_such_user_is_a_missing_folder_not_a_traceback() -> None:
    model = "~no-such-user-here/sd15"
    assert "no such folder" in (model_problem(model) or "")
    assert list(missing_local_paths({(model, "fp16"): 2})) == [(model, 2)]
