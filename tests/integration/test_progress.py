"""Progress of a run: counts of a big manifest without recounting it after every job."""

from __future__ import annotations

import io
import time

from orchestrator.events import JobEvent
from orchestrator.progress import Progress
from orchestrator.run import manifest_scope, throttled
from orchestrator.store import JobStore
from tests.conftest import manifest_of


def test_a_new_manifest_is_counted_from_its_batch(store: JobStore) -> None:
    m = manifest_of("prompt,num_images\na,3\n")
    result = store.submit(m, name="x", defaults={}, max_attempts=3)
    scope = manifest_scope(store, m, result)
    calls = []
    store.count_jobs_among = lambda ids: calls.append(ids) or {}  # type: ignore[method-assign]
    assert scope()["pending"] == 3
    assert calls == []  # the trigger-kept counts, not a recount by id


def test_a_partly_known_manifest_is_recounted_at_most_now_and_then(store: JobStore) -> None:
    store.submit(manifest_of("prompt\na\n"), name="x", defaults={}, max_attempts=3)
    m = manifest_of("prompt\na\nb\n")
    result = store.submit(m, name="y", defaults={}, max_attempts=3)
    assert result.duplicates == 1
    scope = manifest_scope(store, m, result)
    assert scope()["pending"] == 2
    calls = []
    real = store.count_jobs_among

    def counting(ids):  # type: ignore[no-untyped-def]
        calls.append(len(ids))
        return real(ids)

    store.count_jobs_among = counting  # type: ignore[method-assign]
    for _ in range(100):
        scope()
    assert len(calls) <= 1  # not once per event: at most once a second


def test_throttled_waits_in_proportion_to_the_cost() -> None:
    n = {"calls": 0}

    def slow() -> dict[str, int]:
        n["calls"] += 1
        time.sleep(0.01)
        return {"pending": n["calls"]}

    fn = throttled(slow)
    assert fn() == {"pending": 1}
    assert fn() == {"pending": 1}  # the cached value within the interval
    assert n["calls"] == 1
    assert fn.__wrapped__() == {"pending": 2}  # type: ignore[attr-defined]


def test_the_log_line_says_when_a_retry_comes() -> None:
    counts = {s: 0 for s in ("pending", "queued", "running", "succeeded", "failed", "cancelled")}
    out = io.StringIO()
    p = Progress(lambda: counts, stream=out, tty=False)
    p(JobEvent(4, "retrying", 0.01, error="RuntimeError: boom", retry_in=4.0))
    assert "job 4 failed, retrying in 4s, after 0.01s" in out.getvalue()
