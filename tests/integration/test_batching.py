"""Micro-batches: compatible jobs share one pipeline call, each keeps its own image and record.

The images are compared with each job's lone run byte for byte (on the CPU a batch's UNet runs
image by image, ``DiffusersBackend.fused_batches``); the store's companions are checked against
everything that must keep a job out of a batch; the local worker runs a mixed manifest batched
and unbatched into two databases and finds the same pixels, each job once.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from contract.errors import JobInterrupted
from contract.job import GenerationRequest
from orchestrator.config import WorkerSettings
from orchestrator.database import database_url, open_engine
from orchestrator.store import JobStore
from orchestrator.transports.local import LocalWorker
from tests.conftest import manifest_of, submit_text, worker
from workers.batching import AUTO, auto_batch_size, batch_limit, parse_batch_size
from workers.task import PipelineCache, TaskOutput, batch_key, run_job, run_jobs

PROMPTS = (
    "a red circle on a blue background",
    "two small yellow squares on a green background",
    "a white triangle at the top left on a black background",
)


def request(i: int, scheduler: str = "dpmpp_2m", size: int = 64) -> GenerationRequest:
    return GenerationRequest(
        prompt=PROMPTS[i % len(PROMPTS)],
        negative_prompt="blurry" if i % 2 else "",
        seed=40 + i,
        steps=6,
        guidance_scale=7.5,
        width=size,
        height=size,
        scheduler=scheduler,
    )


def pixels(image: Image.Image) -> bytes:
    return np.asarray(image).tobytes()


@pytest.mark.parametrize(
    ("model", "scheduler"),
    [("tiny", "dpmpp_2m"), ("tiny", "euler_a"), ("tiny", "ddim"), ("tiny-xl", "dpmpp_2m")],
)
def test_a_batch_makes_each_image_its_lone_run_makes(model: str, scheduler: str) -> None:
    backend, _ = PipelineCache(threads=1).get(model)
    requests = [request(i, scheduler) for i in range(3)]
    alone = [pixels(backend.generate(r).image) for r in requests]
    together = backend.generate_batch(requests)
    assert [pixels(g.image) for g in together] == alone
    assert len(set(alone)) == 3  # three different images, not one repeated
    assert all(g.batch_size == 3 for g in together)
    assert all(g.unet_evaluations == 12 for g in together)


def test_a_batch_refuses_requests_that_cannot_share_a_call() -> None:
    backend, _ = PipelineCache(threads=1).get("tiny")
    with pytest.raises(ValueError, match="mixes"):
        backend.generate_batch([request(0), request(1, size=128)])


def test_parse_batch_size() -> None:
    assert parse_batch_size("auto") == AUTO
    assert parse_batch_size("AUTO") == AUTO
    assert parse_batch_size("4") == 4
    for bad in ("0", "17", "two", "-1"):
        with pytest.raises(ValueError, match="batch size"):
            parse_batch_size(bad)
    assert auto_batch_size("cpu", 512, 512) == 1
    assert auto_batch_size("coreml", 512, 512) == 1
    assert batch_limit(AUTO, None, {"width": 64, "height": 64}) == 1  # no model loaded yet
    assert batch_limit(5, None, {"width": 64, "height": 64}) == 5


def job(i: int, **fields: Any) -> dict[str, Any]:
    r = request(i)
    return {
        "id": i + 1,
        "batch_id": 1,
        **{k: getattr(r, k) for k in r.__dataclass_fields__},
        "model": "tiny",
        "quantization": "fp16",
        "output_name": "",
        "output_dir": "",
        "line": i + 2,
        "image_index": 0,
        "tags": "",
        "extra": {},
        "attempt": 1,
        **fields,
    }


def test_run_jobs_records_each_job_as_its_lone_run_does() -> None:
    cache = PipelineCache(threads=1)
    jobs = [job(i) for i in range(3)]
    outcomes = run_jobs(jobs, cache)
    for j, out in zip(jobs, outcomes, strict=True):
        assert isinstance(out, TaskOutput)
        lone = run_job(j, cache)
        got = Image.open(io.BytesIO(out.png))
        assert pixels(got) == pixels(Image.open(io.BytesIO(lone.png)))
        assert out.result["batch_size"] == 3 and lone.result["batch_size"] == 1
        assert "Batch size: 3" in got.info["parameters"]
        assert got.info["parameters"].split("\n")[0] == j["prompt"]


class _OneBadPrompt:
    """A backend stand-in whose shared call fails, and whose lone call fails for one prompt."""

    name, device, dtype, threads = "fake", "cpu", "fp32", 1

    def __init__(self) -> None:
        self.model, self.quantization = "tiny", "fp16"

    def versions(self) -> dict[str, str]:
        return {}

    def generate_batch(self, requests: Any, should_stop: Any = None) -> Any:
        raise ValueError("the shared call failed")

    def generate(self, request: GenerationRequest, should_stop: Any = None) -> Any:
        if request.prompt == "bad":
            raise ValueError("this prompt cannot be drawn")
        from workers.backends import GenerationResult

        return GenerationResult(Image.new("RGB", (8, 8)), 0.0, 0.0, 0.0, 2)


def test_one_bad_job_fails_only_itself() -> None:
    cache = PipelineCache()
    cache.current = _OneBadPrompt()
    jobs = [job(0), job(1, prompt="bad"), job(2)]
    outcomes = run_jobs(jobs, cache)
    assert isinstance(outcomes[0], TaskOutput) and isinstance(outcomes[2], TaskOutput)
    assert isinstance(outcomes[1], ValueError) and "cannot be drawn" in str(outcomes[1])


def test_a_stop_interrupts_every_job_of_the_batch() -> None:
    cache = PipelineCache(threads=1)
    outcomes = run_jobs([job(0), job(1)], cache, should_stop=lambda: True)
    assert all(isinstance(o, JobInterrupted) for o in outcomes)


def test_batch_key_keeps_gated_and_different_jobs_apart() -> None:
    assert batch_key(job(0)) == batch_key(job(1, seed=7, prompt="x", negative_prompt="y"))
    for change in (
        {"steps": 7},
        {"width": 128},
        {"scheduler": "euler"},
        {"guidance_scale": 5.0},
        {"model": "tiny-xl"},
        {"quantization": "8bit"},
    ):
        assert batch_key(job(0)) != batch_key(job(0, **change))
    assert batch_key(job(0, min_score=0.5)) is None


# -- the store ---------------------------------------------------------------------------------


def test_companions_are_compatible_same_priority_jobs_each_under_its_own_lease(
    store: JobStore,
) -> None:
    submit_text(
        store,
        "prompt,seed,steps,width,priority,model\n"
        "a,1,4,64,0,tiny\n"  # 1: the first claim
        "b,2,4,64,0,tiny\n"  # 2: a companion
        "c,3,5,64,0,tiny\n"  # 3: other steps
        "d,4,4,128,0,tiny\n"  # 4: other size
        "e,5,4,64,0,tiny-xl\n"  # 5: other model
        "f,6,4,64,1,tiny\n"  # 6: other priority (taken first, alone)
        "g,7,4,64,0,tiny\n"  # 7: a companion
        "h,8,4,64,0,tiny\n",  # 8: a companion, over the limit
    )
    w = worker()
    high = store.claim(w, lease_seconds=30)
    assert high is not None and high.job["id"] == 6
    assert store.claim_companions(high, w, lease_seconds=30, limit=4) == []
    first = store.claim(w, lease_seconds=30)
    assert first is not None and first.job["id"] == 1
    more = store.claim_companions(first, w, lease_seconds=30, limit=2)
    assert [c.job["id"] for c in more] == [2, 7]
    owners = {c.lease_owner for c in (first, *more)}
    assert len(owners) == 3
    assert len({c.attempt_id for c in (first, *more)}) == 3
    for c in more:
        assert store.get_job(c.job["id"])["status"] == "running"
        assert store.renew(c, 30)
    assert store.get_job(8)["status"] == "pending"


def test_no_companions_for_a_gated_job_or_from_a_paused_batch(store: JobStore) -> None:
    submit_text(store, "prompt,seed,min_score\na,1,0.5\nb,2,\n")
    w = worker()
    gated = store.claim(w, lease_seconds=30)
    assert gated is not None and gated.job["id"] == 1
    assert store.claim_companions(gated, w, lease_seconds=30, limit=4) == []
    r = store.submit(manifest_of("prompt,seed\nc,3\nd,4\n"), name="b2", defaults={}, max_attempts=3)
    store.pause(r.batch_id)
    lone = store.claim(w, lease_seconds=30)
    assert lone is not None and lone.job["id"] == 2
    assert store.claim_companions(lone, w, lease_seconds=30, limit=4) == []


# -- the local worker --------------------------------------------------------------------------

MIXED = (
    "prompt,seed,model,steps,num_images\n"
    "a red circle on a blue background,1,tiny,6,3\n"
    "two small yellow squares on a green background,10,tiny-xl,6,3\n"
    "a white triangle at the top left on a black background,20,tiny,6,2\n"
)


def run_local(tmp_path: Path, name: str, batch_size: int | str) -> tuple[JobStore, dict[str, str]]:
    engine = open_engine(database_url(str(tmp_path / f"{name}.db")))
    store = JobStore(engine)
    submit_text(store, MIXED)
    settings = WorkerSettings(
        output_dir=tmp_path / name, burst=True, poll_seconds=0.05, batch_size=batch_size
    )
    stats = LocalWorker(store, settings, cache=PipelineCache(threads=1)).run()
    assert stats.succeeded == 8 and stats.failed == 0
    images = {}
    for png in sorted((tmp_path / name).rglob("*.png")):
        images[png.name] = hashlib.sha256(pixels(Image.open(png))).hexdigest()
    return store, images


def test_a_mixed_manifest_batched_makes_the_images_it_makes_unbatched(tmp_path: Path) -> None:
    batched, with_batches = run_local(tmp_path, "batched", 3)
    _, alone = run_local(tmp_path, "alone", 1)
    assert len(with_batches) == 8
    assert with_batches == alone
    sizes = []
    for job_id in range(1, 9):
        row = batched.get_job(job_id)
        assert row["status"] == "succeeded"
        attempts = row["attempt_rows"]
        assert len(attempts) == 1 and attempts[0]["status"] == "succeeded"
        sizes.append(attempts[0]["batch_size"])
    # Job by job in claim order: 1-3 (tiny) share a call, 4-6 (tiny-xl) another, 7-8 a third.
    assert sizes == [3, 3, 3, 3, 3, 3, 2, 2]
