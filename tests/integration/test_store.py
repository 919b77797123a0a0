from __future__ import annotations

import multiprocessing
import time

import pytest
from sqlalchemy import text

from contract.errors import JobNotFound
from orchestrator.database import open_engine
from orchestrator.store import JobStore
from tests.conftest import submit_text, worker


def job_counts_match_jobs(store: JobStore) -> None:
    with store.engine.connect() as conn:
        actual = dict(conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all())
    kept = {k: v for k, v in store.count_jobs().items() if v}
    assert kept == actual


def test_submit_inserts_and_resubmit_adds_nothing(store: JobStore) -> None:
    first = submit_text(store, "prompt,num_images\na,2\nb,1\n")
    assert (first.rows, first.added, first.duplicates) == (2, 3, 0)
    again = submit_text(store, "prompt,num_images\na,2\nb,1\nc,1\n")
    assert (again.added, again.duplicates) == (1, 3)
    none = submit_text(store, "prompt\na\n")
    assert (none.batch_id, none.added, none.duplicates) == (None, 0, 1)
    assert [b["job_count"] for b in store.list_batches()] == [3, 1]
    assert store.count_jobs()["pending"] == 4
    job_counts_match_jobs(store)


def test_claim_takes_priority_then_order(store: JobStore) -> None:
    submit_text(store, "prompt,priority\nlow,0\nhigh,5\nlow2,0\n")
    order = []
    while (c := store.claim(worker(), lease_seconds=30)) is not None:
        order.append(c.job["prompt"])
    assert order == ["high", "low", "low2"]


def test_claim_prefers_the_loaded_model_among_equal_priority(store: JobStore) -> None:
    submit_text(store, "prompt,model,priority\na,m1,0\nb,m2,0\nc,m2,9\nd,m1,0\n")
    got = [store.claim(worker(), lease_seconds=30, prefer_model="m1") for _ in range(4)]
    # priority 9 first even though it is another model; then m1 jobs before m2
    assert [c.job["prompt"] for c in got if c] == ["c", "a", "d", "b"]


def test_complete_is_recorded_once_and_late_results_are_dropped(store: JobStore) -> None:
    submit_text(store, "prompt\na\n")
    claim = store.claim(worker("w1"), lease_seconds=0.01)
    assert claim is not None
    time.sleep(0.05)  # the lease runs out
    second = store.claim(worker("w2"), lease_seconds=30)
    assert second is not None and second.job["id"] == claim.job["id"]
    assert store.complete(second, "/out/1.png", "0" * 64, {"total_s": 1.0})
    assert not store.complete(claim, "/out/1.png", "0" * 64, {"total_s": 2.0})  # the late one
    job = store.get_job(claim.job["id"])
    assert job["status"] == "succeeded"
    assert [a["status"] for a in job["attempt_rows"]] == ["lost", "succeeded"]
    assert job["attempt_rows"][1]["total_s"] == 1.0
    job_counts_match_jobs(store)


def test_failure_retries_with_backoff_then_fails(store: JobStore) -> None:
    submit_text(store, "prompt\na\n", max_attempts=2)
    c1 = store.claim(worker(), lease_seconds=30)
    assert c1 is not None
    assert store.fail(c1, "RuntimeError: boom") == "pending"
    assert store.claim(worker(), lease_seconds=30) is None  # backing off
    with store.engine.connect() as conn:
        conn.execute(text("UPDATE jobs SET not_before = 0"))
    c2 = store.claim(worker(), lease_seconds=30)
    assert c2 is not None
    assert store.fail(c2, "RuntimeError: boom again") == "failed"
    job = store.get_job(c1.job["id"])
    assert job["status"] == "failed"
    assert job["last_error"] == "RuntimeError: boom again"
    assert [a["error"] for a in job["attempt_rows"]] == [
        "RuntimeError: boom",
        "RuntimeError: boom again",
    ]
    assert store.retry([job["id"]]) == 1
    assert store.get_job(job["id"])["status"] == "pending"


def test_expired_lease_out_of_attempts_fails_the_job(store: JobStore) -> None:
    submit_text(store, "prompt\na\n", max_attempts=1)
    assert store.claim(worker(), lease_seconds=0.01) is not None
    time.sleep(0.05)
    assert store.recover_expired() == 1
    job = store.get_job(1)
    assert job["status"] == "failed"
    assert job["last_error"].startswith("lease expired")


def test_release_gives_the_job_back_without_using_an_attempt(store: JobStore) -> None:
    submit_text(store, "prompt\na\n", max_attempts=1)
    c = store.claim(worker(), lease_seconds=30)
    assert c is not None and store.release(c)
    c2 = store.claim(worker(), lease_seconds=30)
    assert c2 is not None and c2.job["attempt"] == 2  # attempt numbers only grow
    job = store.get_job(1)
    assert job["attempts"] == 1  # ... but the released one used up no attempt
    assert [(a["number"], a["status"]) for a in job["attempt_rows"]] == [
        (1, "released"),
        (2, "running"),
    ]


def test_cancel_running_job_makes_its_renewal_fail(store: JobStore) -> None:
    submit_text(store, "prompt\na\nb\n")
    c = store.claim(worker(), lease_seconds=30)
    assert c is not None and store.renew(c, 30)
    assert store.cancel([c.job["id"]]) == 1
    assert not store.renew(c, 30)
    assert not store.complete(c, "/x.png", "0" * 64, {})
    assert store.get_job(c.job["id"])["status"] == "cancelled"
    assert store.cancel(batch_id=1) == 1
    assert store.count_jobs()["cancelled"] == 2
    job_counts_match_jobs(store)


def test_unknown_job_ids_are_named(store: JobStore) -> None:
    submit_text(store, "prompt\na\n")
    with pytest.raises(JobNotFound, match="no job with id 7, 9"):
        store.cancel([1, 7, 9])
    assert store.get_job(1)["status"] == "pending"  # nothing half-done


def _claim_all(url: str, name: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = JobStore(open_engine(url))
    got = []
    while (c := store.claim(worker(name), lease_seconds=60)) is not None:
        got.append(c.job["id"])
        store.complete(c, f"/out/{c.job['id']}.png", "0" * 64, {})
    out.put(got)


def test_two_processes_never_claim_the_same_job(store: JobStore, db_url: str) -> None:
    submit_text(store, "prompt,num_images\nx,400\n")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(db_url, f"p{i}", out)) for i in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    claimed = results[0] + results[1]
    assert len(claimed) == 400
    assert len(set(claimed)) == 400
    assert all(results), "both processes got work"
    assert store.count_jobs()["succeeded"] == 400
    job_counts_match_jobs(store)
