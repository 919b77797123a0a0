"""Dashboard pages through the WSGI app itself (no server, no browser): a batch's jobs, the
workers' liveness, the gallery's search and the dtype a job ran in, with their JSON API."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from orchestrator.config import WorkerSettings
from orchestrator.status import overview, render_text
from orchestrator.store import JobStore
from orchestrator.transports.local import LocalWorker
from orchestrator.web import app as web
from orchestrator.web.app import DashboardApp
from tests.conftest import submit_text, worker
from tests.integration.test_reports import FOX, INPUT_ERROR, _plans, populate, runner
from workers.task import PipelineCache


class Client:
    """Calls the WSGI app as a server would, with a loopback Host."""

    def __init__(self, store: JobStore) -> None:
        self.app = DashboardApp(store, refresh_s=0)

    def get(self, url: str) -> tuple[int, str]:
        path, _, query = url.partition("?")
        got: dict[str, str] = {}

        def start_response(status: str, _headers: list[tuple[str, str]]) -> None:
            got["status"] = status

        environ = {
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": "GET",
            "HTTP_HOST": "127.0.0.1:8080",
        }
        body = b"".join(self.app(environ, start_response)).decode()
        return int(got["status"].split()[0]), body

    def page(self, url: str) -> str:
        status, body = self.get(url)
        assert status == 200, (url, body)
        return body

    def api(self, url: str) -> Any:
        return json.loads(self.page(url))

    def error(self, url: str) -> tuple[int, str]:
        """The status and message of an error page (never a traceback)."""
        status, body = self.get(url)
        assert "Traceback" not in body
        if url.startswith("/api/"):
            return status, json.loads(body)["error"]
        m = re.search(r'<p id="error">(.*?)</p>', body, re.S)
        assert m, body
        return status, html.unescape(m.group(1))


def visible(body: str) -> str:
    """The page's text, tags stripped, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


@pytest.fixture
def populated(store: JobStore, tmp_path: Path) -> dict[str, Any]:
    return populate(store, tmp_path / "out")


@pytest.fixture
def client(store: JobStore) -> Client:
    return Client(store)


def job_ids(body: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr id="job-(\d+)">', body)]


# -- 1. a batch's jobs -------------------------------------------------------------------------


def test_batch_page_filters_and_pages_its_jobs(store: JobStore, client: Client) -> None:
    submit_text(store, "prompt,seed,num_images\nfirst batch,1,2\n")
    long_prompt = "a lighthouse " * 40
    # jobs 3..122, seeds 7..126
    submit_text(store, f"prompt,seed,num_images\n{long_prompt},7,120\n")
    store.cancel(list(range(3, 13)))  # ten cancelled: jobs 3..12

    body = client.page("/batches")
    assert 'href="/batches/2"' in body  # the batches list links to each batch's page

    body = client.page("/batches/2")
    text_ = visible(body)
    assert "Jobs 1–50 of 120" in text_ and "page 1 of 3" in text_
    assert job_ids(body) == list(range(3, 53))
    assert 'href="/jobs/3"' in body
    row = visible(re.search(r'<tr id="job-13">.*?</tr>', body, re.S).group(0))  # type: ignore[union-attr]
    assert "pending" in row and " 17 " in f" {row} " and "0/3" in row
    assert "..." in row and len(row) < len(long_prompt)  # the prompt is truncated
    assert 'id="next" ' not in body and 'href="/batches/2?page=2" id="next"' in body
    assert 'id="prev"' not in body

    body = client.page("/batches/2?page=3")
    assert job_ids(body) == list(range(103, 123))
    assert "Jobs 101–120 of 120" in visible(body)
    assert 'href="/batches/2?page=2" id="prev"' in body and 'id="next"' not in body

    body = client.page("/batches/2?status=cancelled")
    assert job_ids(body) == list(range(3, 13)) and "Jobs 1–10 of 10 cancelled" in visible(body)
    body = client.page("/batches/2?status=pending&page=2")
    assert job_ids(body) == list(range(63, 113))
    assert "Jobs 51–100 of 110 pending" in visible(body)
    assert 'href="/batches/2?status=pending&amp;page=3" id="next"' in body
    assert 'href="/batches/2?status=pending" id="prev"' in body
    assert job_ids(client.page("/batches/2?status=failed")) == []

    data = client.api("/api/batches/2/jobs?status=pending&page=3")
    assert (data["total"], data["page"], data["pages"], data["page_size"]) == (110, 3, 3, 50)
    assert [j["id"] for j in data["jobs"]] == list(range(113, 123))
    assert data["jobs"][0]["url"] == "/jobs/113" and data["jobs"][0]["seed"] == 117
    assert data["prev"] == "/batches/2?status=pending&page=2" and data["next"] is None
    assert client.api("/api/batches/1/jobs")["total"] == 2

    for url, status, message in (
        ("/batches/2?status=bogus", 400, "status must be one of pending, queued, running"),
        ("/batches/2?status=loading", 400, "status must be one of"),
        ("/batches/2?page=abc", 400, "page must be a whole number"),
        ("/batches/2?page=0", 400, "page must be a whole number"),
        ("/batches/2?page=4", 404, "batch 2 has 3 pages of jobs; there is no page 4"),
        ("/batches/9", 404, "no batch 9"),
        ("/api/batches/2/jobs?status=nope", 400, "status must be one of"),
        ("/api/batches/9/jobs", 404, "no batch 9"),
    ):
        got_status, got_message = client.error(url)
        assert got_status == status and message in got_message, (url, got_message)


def test_batch_jobs_show_attempts_and_durations(
    store: JobStore, client: Client, populated: dict[str, Any]
) -> None:
    data = client.api("/api/batches/1/jobs")
    by_id = {j["id"]: j for j in data["jobs"]}
    assert sorted(by_id) == [1, 2, 3, 4, 5]
    assert by_id[2]["status"] == "succeeded" and by_id[2]["duration_s"] == pytest.approx(1.0)
    assert by_id[4]["status"] == "failed" and by_id[4]["attempts"] == 1
    # a running job's duration is its open attempt's time so far
    claim = store.claim(worker(), lease_seconds=30)
    assert claim is not None and claim.job_id == 6
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE attempts SET started_at = :t WHERE id = :id"),
            {"t": time.time() - 90, "id": claim.attempt_id},
        )
    (running,) = client.api("/api/batches/2/jobs?status=running")["jobs"]
    assert running["id"] == 6 and 90 <= running["duration_s"] < 3600
    assert "1m3" in visible(client.page("/batches/2?status=running"))


def test_batch_jobs_read_index_ranges(store: JobStore, populated: dict[str, Any]) -> None:
    plans = _plans(
        store,
        [
            lambda: store.list_batch_jobs(1),
            lambda: store.list_batch_jobs(1, "failed", offset=1),
            lambda: store.list_gallery_images(),
            lambda: store.list_gallery_images(text="fox", tag="x"),
            lambda: store.list_gallery_images(batch_id=1, text="fox"),
        ],
    )
    for plan in plans:
        for line in plan.splitlines()[1:]:
            if re.match(r"SCAN (jobs|attempts)\b", line.strip()):
                assert "INDEX" in line, plan
    joined = "\n".join(plans)
    assert "ix_jobs_batch_status" in joined and "ix_jobs_status_finished_at" in joined


# -- 2. workers' liveness ----------------------------------------------------------------------


def _busy_row(name: str, transport: str, job: int | None, last_seen: float) -> dict[str, Any]:
    now = time.time()
    return {
        "name": name,
        "transport": transport,
        "host": "testhost",
        "pid": 1,
        "backend": "diffusers",
        "device": "cpu",
        "model": "tiny",
        "state": "busy" if job else "idle",
        "current_job": job,
        "jobs_done": 0,
        "jobs_failed": 0,
        "busy_s": 0.0,
        "started_at": now - 600,
        "last_seen": last_seen,
    }


def seconds_blurred(text: str) -> str:
    """A liveness text with its second counts blurred: two renderings may be a second apart."""
    return re.sub(r"\d+s\b", "Ns", text)


def test_a_worker_busy_on_a_long_job_is_not_shown_as_dead(store: JobStore, client: Client) -> None:
    submit_text(store, "prompt,num_images\nslow,2\n")
    now = time.time()
    claim = store.claim(worker("w1"), lease_seconds=30)
    assert claim is not None
    # A local worker writes its row when it takes the job, then only renews the lease.
    store.upsert_workers([_busy_row("w1", "local", claim.job_id, now - 130)])
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE attempts SET started_at = :t WHERE id = :id"),
            {"t": now - 130, "id": claim.attempt_id},
        )
    assert store.renew(claim, 30)

    (w,) = store.read_worker_stats()
    assert w["busy_job"] == claim.job_id and w["holds_job"]
    assert w["lease_expires_at"] > now
    body = client.page("/workers")
    cell = visible(re.search(r'<td class="liveness".*?</td>', body, re.S).group(0))  # type: ignore[union-attr]
    assert cell.startswith(f"busy on job {claim.job_id} for 2m1"), cell
    assert "lease renewed (expires in" in cell and "last seen 2m ago" not in cell
    # the status command and the API say the same (a second may tick between the renderings)
    assert seconds_blurred(cell) in seconds_blurred(render_text(overview(store)))
    (api_worker,) = client.api("/api/workers")["workers"]
    assert seconds_blurred(api_worker["liveness"]) == seconds_blurred(cell)

    # A lease that stopped being renewed says so.
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET lease_expires_at = :t"), {"t": now - 40})
    (w,) = overview(store)["workers"]
    # ... and, its row silent for longer than twelve heartbeats, it is gone, with its job
    assert w["state"] == "gone" and w["reported_state"] == "busy"
    assert re.fullmatch(
        rf"gone: silent for 2m1\ds; was busy on job {claim.job_id} \(still running under it, "
        r"its lease expired 4\ds ago\)",
        w["liveness"],
    ), w["liveness"]


def test_rq_worker_liveness_is_its_heartbeat(store: JobStore) -> None:
    submit_text(store, "prompt\nremote\n")
    now = time.time()
    # An RQ worker's row follows its heartbeat; its job's lease is the coordinator's.
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = 'running', lease_owner = 'coord/abcd', attempts = 1, "
                "started_at = :t WHERE id = 1"
            ),
            {"t": now - 300},
        )
        conn.execute(
            text(
                "INSERT INTO attempts (job_id, batch_id, number, status, worker, host, started_at) "
                "VALUES (1, 1, 1, 'running', 'rq1', 'mac', :t)"
            ),
            {"t": now - 300},
        )
    store.upsert_workers(
        [_busy_row("rq1", "rq", 1, now - 3), _busy_row("gone", "rq", 99, now - 200)]
    )
    rows = {w["name"]: w["liveness"] for w in overview(store)["workers"]}
    assert rows["rq1"].startswith("busy on job 1 for 5m0") and rows["rq1"].endswith(
        "heartbeat 3s ago"
    )
    # With no coordinator running, nobody relays an RQ worker's heartbeats: at most stale.
    assert re.fullmatch(
        r"stale: not heard from for 3m2\ds \(no coordinator is running to relay it\); was busy "
        r"on job 99 \(that job is gone\)",
        rows["gone"],
    ), rows["gone"]


# -- 3. the gallery's search -------------------------------------------------------------------


def _more_images(store: JobStore, out: Path) -> None:
    """Batch 3 (jobs 9-12): succeeded images with tags, besides populate's three foxes in
    batch 1 (jobs 1-3)."""
    submit_text(
        store,
        "prompt,seed,tags,num_images\n"
        "a grey cat on a wall,10,cat;animal,2\n"
        "a FOX cub asleep,20,animal,1\n"
        "city at night,30,urban,1\n",
    )
    w = LocalWorker(
        store,
        WorkerSettings(output_dir=out, burst=True, poll_seconds=0.05),
        cache=PipelineCache(),
        runner=runner,
    )
    # batch 2's three pending jobs run too: prompt "later job"
    assert w.run().succeeded == 7


def test_gallery_search_and_filters(
    store: JobStore, client: Client, populated: dict[str, Any], tmp_path: Path
) -> None:
    _more_images(store, tmp_path / "out")

    def ids(url: str) -> list[int]:
        return [im["id"] for im in client.api(url)["images"]]

    everything = ids("/api/gallery")
    assert len(everything) == 10
    assert ids("/api/gallery?q=fox") == [
        i for i in everything if i in (1, 2, 3, 11)
    ]  # any case, newest first
    assert ids("/api/gallery?q=fox&batch=1") == [3, 2, 1]
    assert ids("/api/gallery?batch=3") == [12, 11, 10, 9]  # a batch: highest job first
    assert ids("/api/gallery?tag=animal") == [i for i in everything if i in (9, 10, 11)]
    assert ids("/api/gallery?tag=CAT&q=grey") == [i for i in everything if i in (9, 10)]
    assert ids("/api/gallery?tag=an") == []  # a whole tag, not part of one
    assert ids("/api/gallery?q=%25") == [] and ids("/api/gallery?q=_") == []  # LIKE escaped
    assert ids("/api/gallery?status=succeeded&q=city") == [12]
    data = client.api("/api/gallery?q=fox")
    assert data["searched"] == "searched all 10 images"
    assert data["filters"] == {"q": "fox", "tag": None, "batch": None, "status": None}
    assert client.api("/api/gallery")["searched"] is None  # no search: nothing to say

    body = client.page("/gallery?q=fox&tag=animal")
    assert '<form method="get" action="/gallery"' in body and 'value="fox"' in body
    assert "Searched all 10 images." in visible(body)
    assert re.findall(r'<a href="/jobs/(\d+)"><img', body) == ["11"]
    assert "tags animal" in visible(body)
    assert "No image matches." in visible(client.page("/gallery?q=zebra"))

    for url, status, message in (
        ("/gallery?status=failed", 400, "only succeeded jobs have"),
        ("/gallery?status=bogus", 400, "status must be one of"),
        ("/gallery?batch=abc", 400, "batch must be a whole number"),
        ("/gallery?page=%C2%B2", 400, "page must be a whole number"),
        ("/gallery?batch=77", 404, "no batch 77"),
        ("/gallery?q=" + "x" * 201, 400, "q is longer than 200 characters"),
        ("/api/gallery?status=running", 400, "only succeeded jobs have"),
    ):
        got_status, got_message = client.error(url)
        assert got_status == status and message in got_message, (url, got_message)


def test_gallery_pages_keep_the_filters(
    store: JobStore,
    client: Client,
    populated: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _more_images(store, tmp_path / "out")
    monkeypatch.setattr(web, "GALLERY_PAGE", 2)
    first = client.api("/api/gallery?tag=animal")
    assert len(first["images"]) == 2 and first["next"] == "/gallery?tag=animal&page=2"
    second = client.api(first["next"].replace("/gallery", "/api/gallery"))
    assert len(second["images"]) == 1 and second["next"] is None
    assert second["prev"] == "/gallery?tag=animal"
    body = client.page("/gallery?tag=animal&page=2")
    assert 'href="/gallery?tag=animal" id="prev"' in body


def test_a_search_reads_a_bounded_window(store: JobStore, populated: dict[str, Any]) -> None:
    found = store.list_gallery_images(text="fox", window=2)
    assert (found["searched"], found["cut"]) == (2, True)
    assert [i["id"] for i in found["images"]] == [3, 2]
    assert store.list_gallery_images(text="fox")["cut"] is False
    assert all(i["prompt"] == FOX for i in store.list_gallery_images(text="RED")["images"])


# -- 4. the dtype a job ran in -----------------------------------------------------------------


def test_job_page_says_what_dtype_ran(
    store: JobStore, client: Client, populated: dict[str, Any]
) -> None:
    def ran(job_id: int) -> str:
        body = client.page(f"/jobs/{job_id}")
        return visible(re.search(r'<dd id="ran".*?</dd>', body, re.S).group(0))  # type: ignore[union-attr]

    # populate's runner reports fp32 on cpu, the job asked for fp16 (the default)
    assert ran(1) == "requested fp16, ran fp32 on cpu (fake, 1 torch thread) (attempt 1)"
    assert 'class="differs"' in client.page("/jobs/1")
    data = client.api("/api/jobs/1")["ran"]
    assert (data["requested"], data["dtype"], data["device"], data["differs"]) == (
        "fp16",
        "fp32",
        "cpu",
        True,
    )
    assert data["torch_threads"] == 1 and data["backend"] == "fake"
    assert ran(6) == "not run yet (requested fp16)"
    assert client.api("/api/jobs/6")["ran"] is None
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE attempts SET dtype = 'fp16', device = 'cuda' WHERE job_id = 2"))
        conn.execute(text("UPDATE jobs SET quantization = '4bit' WHERE id = 3"))
    assert ran(2).startswith("ran fp16 on cuda, as requested")
    assert 'class="differs"' not in client.page("/jobs/2")
    assert ran(3).startswith("requested 4bit weights, computed in fp32 on cpu")


def test_job_page_gives_an_attempts_error_the_tables_width(
    client: Client, populated: dict[str, Any]
) -> None:
    """The error was the sixteenth column, beside fifteen that do not wrap, and its
    ``word-break: break-word`` let the browser squeeze it to one letter a line."""
    body = client.page("/jobs/4")  # populate's failed job
    table = re.search(r'<table class="attempts">.*?</table>', body, re.S).group(0)  # type: ignore[union-attr]
    columns = len(re.findall(r"<th\b", table))
    detail = re.search(
        r'<tr class="detail"><td colspan="(\d+)" class="error">(.*?)</td>', table, re.S
    )
    assert detail is not None and int(detail.group(1)) == columns
    assert html.unescape(detail.group(2)).strip() == INPUT_ERROR
    assert "<th>error</th>" not in table
    css = (web.TEMPLATES / "base.html").read_text()
    rule = re.search(r"td\.error \{([^}]*)\}", css).group(1)  # type: ignore[union-attr]
    assert "break-word" not in rule.replace("overflow-wrap: break-word", "")


def test_job_page_gives_the_models_licence_and_links_only_to_the_web(
    store: JobStore, client: Client, tmp_path: Path
) -> None:
    """The licence its batch recorded; a model card's licence_link is whatever its README
    says, so only an http(s) link becomes one."""
    card = tmp_path / "model"
    card.mkdir()
    (card / "README.md").write_text(
        "---\nlicense: other\nlicense_name: evil\nlicense_link: javascript:alert(1)\n---\n"
    )
    submit_text(store, f"prompt,seed,model\na fox,1,black-forest-labs/FLUX.1-dev\nb,2,{card}\n")

    def licence(job_id: int) -> str:
        body = client.page(f"/jobs/{job_id}")
        return re.search(r'<dd id="licence">.*?</dd>', body, re.S).group(0)  # type: ignore[union-attr]

    flux = licence(1)
    assert '<a href="https://huggingface.co/black-forest-labs/FLUX.1-dev/' in flux
    assert visible(flux).startswith("flux-1-dev-non-commercial-license : not to be used to train")
    assert visible(flux).endswith("(known model)")
    # A link that is not a web page is not recorded (a relative one names a file beside the
    # card); and should a record hold one anyway, the page shows no link.
    assert client.api("/api/jobs/2")["licence"]["url"] is None
    with store.engine.begin() as conn:
        raw = conn.execute(text("SELECT licences_json FROM batches WHERE id = 1")).scalar_one()
        licences = json.loads(raw)
        licences[str(card)]["url"] = "javascript:alert(1)"
        conn.execute(
            text("UPDATE batches SET licences_json = :j WHERE id = 1"), {"j": json.dumps(licences)}
        )
    evil = licence(2)
    assert "<a " not in evil and "javascript" not in evil
    assert visible(evil) == "evil (model card)"
