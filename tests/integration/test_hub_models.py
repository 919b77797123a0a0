"""A hub model id on a worker that cannot reach the hub: loaded from the cache without asking
the network, refused in one line when it is not there, and retried only when a retry could
help. The hub is 127.0.0.1 on a port nothing listens on: no test here leaves this machine."""

from __future__ import annotations

import logging
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.errors import JobInputError, ModelLoadError, ModelNotFound
from orchestrator.config import WorkerSettings
from orchestrator.store import JobStore
from orchestrator.transports.local import LocalWorker
from tests.conftest import submit_text
from workers.models import hub
from workers.task import PipelineCache

pytestmark = pytest.mark.slow


@pytest.fixture
def no_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty Hugging Face cache, HF_HUB_OFFLINE unset, and a hub that refuses connections;
    yields the cache folder."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    hub.forget_reachability()
    yield cache
    hub.forget_reachability()


def hub_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("huggingface_hub")]


def cache_as_hub_model(cache: Path, repo: str, folder: Path) -> None:
    """``folder`` laid out in ``cache`` as huggingface_hub leaves a download of ``repo``."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("abc123")
    shutil.copytree(folder, repo_dir / "snapshots" / "abc123")


def test_a_cached_hub_model_loads_without_asking_an_unreachable_hub(
    no_hub: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from workers.models import builtin_model

    tiny = builtin_model("tiny")
    assert tiny is not None
    cache_as_hub_model(no_hub, "me/tiny-copy", tiny)
    caplog.set_level(logging.WARNING)
    backend, _ = PipelineCache(device="cpu", threads=1).get("me/tiny-copy")
    assert backend.model == "me/tiny-copy"
    assert hub_records(caplog) == []  # no request was retried: none was made


def test_an_uncached_model_fails_in_one_quiet_line_while_the_hub_is_away(
    no_hub: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with pytest.raises(ModelLoadError) as info:
        PipelineCache(device="cpu", threads=1).get("tiny-sdx")
    # the network may come back: retried like any load that failed
    assert not isinstance(info.value, JobInputError)
    assert str(info.value) == (
        "model 'tiny-sdx': not a built-in model (did you mean 'tiny-sd3'?) or a folder "
        "on this machine, and not in this machine's Hugging Face cache, and the hub cannot be "
        "reached (127.0.0.1 does not answer): download it where there is a network "
        "(`hf download tiny-sdx`) or give a local diffusers folder"
    )
    assert hub_records(caplog) == []


def test_a_model_that_cannot_be_found_offline_fails_once_through_the_real_task(
    no_hub: Path, store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    submit_text(store, "prompt,model\na,tiny-sdx\n", max_attempts=3)
    settings = WorkerSettings(output_dir=tmp_path / "out", burst=True, poll_seconds=0.05)
    worker = LocalWorker(store, settings, cache=PipelineCache(device="cpu"))
    assert worker.run().failed == 1
    job = store.get_job(1)
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert job["attempt_rows"][0]["error"].startswith(
        "ModelNotFound: model 'tiny-sdx': not a built-in model (did you mean 'tiny-sd3'?)"
    )
    assert "(HF_HUB_OFFLINE=1)" in job["attempt_rows"][0]["error"]


def test_a_model_the_hub_says_it_has_not_is_not_retried(
    no_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stand-ins for a hub that answers (the real one is never asked by the tests)
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.setattr(hub, "exists", lambda _repo: False)
    with pytest.raises(ModelNotFound) as info:
        PipelineCache(device="cpu", threads=1).get("someone/no-such-model")
    assert str(info.value) == (
        "model 'someone/no-such-model': not a model on the Hugging Face hub (or a private one: "
        "`hf auth login` with a token that may read it)"
    )
