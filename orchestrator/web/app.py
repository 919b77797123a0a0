"""The dashboard's WSGI application: pages, the retry and cancel actions, and the JSON API.

Pages are rendered on the server with Jinja2 (autoescaping on: prompts are user text). The
actions are POST forms that carry a per-process token, and requests must name a loopback
Host when the server listens on one, so neither another web site nor a DNS-rebound name can
retry or cancel jobs through the user's browser.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from contract.errors import JobNotFound, UsageError
from contract.status import ACTIVE_STATUSES, VISIBLE_STATUSES, AttemptStatus, JobStatus
from orchestrator import status as st
from orchestrator.store import JobStore, ReadModel
from orchestrator.store.control import check_priority
from workers.models.licences import from_record

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
GALLERY_PAGE = 24
BATCH_PAGE = 50  # jobs per page of a batch
MAX_SEARCH_CHARS = 200
MAX_PAGE = 10_000
MAX_FORM_BYTES = 1 << 20
_ID = r"(\d{1,18})"  # fits SQLite's 64-bit integers


class HTTPError(Exception):
    """An error answered with its status and message, as HTML or JSON by path."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """What the handlers read from a WSGI environ."""

    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def field(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None

    def int_arg(
        self, name: str, default: int | None, low: int = 1, high: int = 2**62
    ) -> int | None:
        raw = self.arg(name)
        if raw is None or raw == "":
            return default
        # isascii: "²" is a digit to isdigit() but not to int()
        if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
            upto = f" to {high}" if high < 2**62 else ""
            raise HTTPError(
                "400 Bad Request",
                f"{name} must be a whole number from {low}{upto}, not {raw[:40]!r}",
            )
        return int(raw)

    def choice_arg(self, name: str, allowed: Sequence[str]) -> str | None:
        """A query parameter that must be one of ``allowed`` (None when absent or empty)."""
        raw = self.arg(name)
        if raw is None or raw == "":
            return None
        if raw not in allowed:
            raise HTTPError(
                "400 Bad Request", f"{name} must be one of {', '.join(allowed)}, not {raw[:40]!r}"
            )
        return raw

    def text_arg(self, name: str, limit: int = MAX_SEARCH_CHARS) -> str | None:
        """A free-text query parameter, stripped (None when empty); at most ``limit`` chars."""
        raw = (self.arg(name) or "").strip()
        if len(raw) > limit:
            raise HTTPError("400 Bad Request", f"{name} is longer than {limit} characters")
        return raw or None


@dataclass
class Response:
    body: bytes
    status: str = "200 OK"
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[..., Response]


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _per_step(attempt: dict[str, Any], steps: int) -> float | None:
    d = attempt.get("denoise_s")
    return d / steps if d is not None and steps else None


_VISIBLE = tuple(s.value for s in VISIBLE_STATUSES)
# Quantizations that name a floating-point type, as workers report the dtype they ran.
_FLOAT_TYPES = {
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
}


def ran_as(quantization: str, attempts: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """What the job asked for next to what its latest attempt that reported one actually ran
    (backend, device, dtype, torch threads), and whether they differ: a worker on a CPU runs
    an fp16 job in fp32. A palettized variant (``4bit``...) is computed in a float type, which
    is said, not counted as a difference. None until an attempt reports."""
    reported = [a for a in attempts if a.get("dtype")]
    if not reported:
        return None
    done = [a for a in reported if a["status"] == AttemptStatus.SUCCEEDED]
    a = (done or reported)[-1]
    dtype = str(a["dtype"])
    where = f" on {a['device']}" if a.get("device") else ""
    how = ", ".join(
        x
        for x in (
            a.get("backend"),
            f"{a['torch_threads']} torch thread{'s' if a['torch_threads'] != 1 else ''}"
            if a.get("torch_threads")
            else None,
        )
        if x
    )
    asked = _FLOAT_TYPES.get(quantization.lower())
    if asked is None:
        differs = False
        text = f"requested {quantization} weights, computed in {dtype}{where}"
    else:
        differs = asked != _FLOAT_TYPES.get(dtype.lower(), dtype.lower())
        text = (
            f"requested {quantization}, ran {dtype}{where}"
            if differs
            else f"ran {dtype}{where}, as requested"
        )
    return {
        "requested": quantization,
        "dtype": dtype,
        "device": a.get("device"),
        "backend": a.get("backend"),
        "torch_threads": a.get("torch_threads"),
        "attempt": a.get("number"),
        "differs": differs,
        "text": text + (f" ({how})" if how else ""),
    }


class DashboardApp:
    """The WSGI application. ``refresh_s`` is how often pages reload while jobs are pending,
    queued or running (0: never); ``allowed_hosts`` the Host names accepted (None: any)."""

    def __init__(
        self,
        store: JobStore,
        *,
        refresh_s: float = 5.0,
        allowed_hosts: Iterable[str] | None = LOOPBACK_HOSTS,
    ) -> None:
        from jinja2 import Environment, FileSystemLoader

        self.store = store  # the user's actions (retry, cancel, pause, priority) write
        self.reads: ReadModel = store  # every page and API view only reads
        self.refresh_s = refresh_s
        self.allowed_hosts = None if allowed_hosts is None else frozenset(allowed_hosts)
        self.token = secrets.token_urlsafe(24)
        self.env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
        self.env.filters.update(
            seconds=st.seconds,
            duration=st.duration,
            percent=st.percent,
            ago=st.ago,
            when=_when,
            backend=st.backend_of,
            score=st.fmt_score,
        )
        self.env.globals["stage_rows"] = st.STAGE_ROWS
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (method, re.compile(pattern), handler)
            for method, pattern, handler in (
                ("GET", r"/", self.overview),
                ("GET", r"/batches", self.batches),
                ("GET", rf"/batches/{_ID}", self.batch),
                ("GET", r"/workers", self.workers),
                ("GET", r"/failures", self.failures),
                ("GET", r"/gallery", self.gallery),
                ("GET", rf"/jobs/{_ID}", self.job),
                ("GET", rf"/images/{_ID}\.png", self.image),
                ("POST", rf"/jobs/{_ID}/(retry|cancel)", self.job_action),
                ("POST", rf"/batches/{_ID}/(retry|cancel)", self.batch_action),
                ("POST", r"/failures/retry", self.retry_failures),
                ("POST", rf"/batches/{_ID}/(pause|resume)", self.batch_pause),
                ("POST", rf"/batches/{_ID}/priority", self.batch_priority),
                ("POST", rf"/jobs/{_ID}/priority", self.job_priority),
                ("POST", r"/queue/(pause|resume)", self.queue_pause),
                ("GET", r"/api/overview", self.api_overview),
                ("GET", r"/api/batches", self.api_batches),
                ("GET", rf"/api/batches/{_ID}/jobs", self.api_batch_jobs),
                ("GET", r"/api/workers", self.api_workers),
                ("GET", r"/api/failures", self.api_failures),
                ("GET", r"/api/gallery", self.api_gallery),
                ("GET", rf"/api/jobs/{_ID}", self.api_job),
                ("GET", r"/api/token", self.api_token),
                ("GET", r"/api/paused", self.api_paused),
                ("POST", r"/api/(pause|resume)", self.api_queue_pause),
                ("POST", rf"/api/batches/{_ID}/(pause|resume)", self.api_batch_pause),
                ("POST", rf"/api/batches/{_ID}/priority", self.api_batch_priority),
                ("POST", rf"/api/jobs/{_ID}/priority", self.api_job_priority),
            )
        ]

    # -- WSGI ----------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO") or "/"
        try:
            response = self.handle(environ, path)
        except HTTPError as exc:
            response = self._error(path, exc.status, exc.message)
        except Exception:
            logger.exception("dashboard request %s failed", path)
            response = self._error(path, "500 Internal Server Error", "internal error (see log)")
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"),
            # No other page may frame this one (a framed retry/cancel button is a click away
            # from being pressed by someone else's page).
            ("X-Frame-Options", "DENY"),
            ("Content-Security-Policy", "frame-ancestors 'none'"),
            *response.headers,
        ]
        start_response(response.status, headers)
        return [response.body]

    def handle(self, environ: dict[str, Any], path: str) -> Response:
        self._check_host(environ)
        method = environ.get("REQUEST_METHOD", "GET").upper()
        allowed: list[str] = []
        for route_method, pattern, handler in self.routes:
            m = pattern.fullmatch(path)
            if m is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            request = Request(
                method=method,
                path=path,
                query=parse_qs(environ.get("QUERY_STRING", "")),
                form=self._form(environ) if method == "POST" else {},
            )
            if method == "POST":
                self._check_token(request, environ.get("HTTP_X_ORCHESTRATE_TOKEN"))
            return handler(request, *m.groups())
        if allowed:
            raise HTTPError("405 Method Not Allowed", f"use {', '.join(allowed)} for {path}")
        raise HTTPError("404 Not Found", f"nothing at {path}")

    def _check_host(self, environ: dict[str, Any]) -> None:
        if self.allowed_hosts is None:
            return
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        name = urlsplit(f"//{host}").hostname or ""
        if name.lower() not in self.allowed_hosts:
            raise HTTPError("400 Bad Request", f"unexpected Host header {host!r}")

    def _check_token(self, request: Request, header: str | None = None) -> None:
        """The form's ``token`` field, or (API clients) the ``X-Orchestrate-Token`` header:
        the per-process token that only a page of this dashboard (or ``/api/token``, which
        no other site can read) gives out."""
        if not hmac.compare_digest(request.field("token") or header or "", self.token):
            raise HTTPError("403 Forbidden", "stale or missing form token: reload the page")

    @staticmethod
    def _form(environ: dict[str, Any]) -> dict[str, list[str]]:
        try:
            size = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            size = 0
        if size > MAX_FORM_BYTES:
            raise HTTPError("413 Content Too Large", "form too large")
        body = environ["wsgi.input"].read(size) if size > 0 else b""
        if (environ.get("CONTENT_TYPE") or "").split(";")[0].strip() == "application/json":
            # An API client's JSON object, read as a form of one value per field.
            try:
                data = json.loads(body or b"{}")
            except ValueError as exc:
                raise HTTPError("400 Bad Request", f"the body is not JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise HTTPError("400 Bad Request", "the body must be a JSON object")
            return {str(k): [str(v)] for k, v in data.items() if v is not None}
        return parse_qs(body.decode("utf-8", "replace"))

    def _error(self, path: str, status: str, message: str) -> Response:
        if path.startswith("/api/"):
            return self._json({"error": message}, status)
        body = self.env.get_template("error.html").render(
            self._context(path, {}), status=status, message=message
        )
        return Response(body.encode(), status)

    # -- helpers -------------------------------------------------------------------------------

    def _context(self, path: str, query: dict[str, list[str]]) -> dict[str, Any]:
        try:
            active = self.reads.has_active()
        except Exception:  # an error page must render even when the database does not
            active = False
        keep = [(k, v) for k, vs in query.items() for v in vs if k != "msg"]
        return {
            "path": path,
            "here": f"{path}?{urlencode(keep)}" if keep else path,  # where a form comes back to
            "msg": query["msg"][0] if query.get("msg") else None,
            "token": self.token,
            "active": active,
            "refresh_s": self.refresh_s if active else 0,
            "now": time.time(),
        }

    def _page(self, request: Request, template: str, **values: Any) -> Response:
        html = self.env.get_template(template).render(
            self._context(request.path, request.query), **values
        )
        return Response(html.encode())

    @staticmethod
    def _json(data: Any, status: str = "200 OK") -> Response:
        body = json.dumps(data, default=str, indent=1).encode()
        return Response(body, status, "application/json")

    @staticmethod
    def _redirect(request: Request, message: str) -> Response:
        """Back to the page the form came from (a local path only), with a message."""
        target = request.field("next") or "/"
        parts = urlsplit(target)
        if not target.startswith("/") or target.startswith("//") or parts.netloc or "\\" in target:
            target, parts = "/", urlsplit("/")
        query = [(k, v) for k, vs in parse_qs(parts.query).items() for v in vs if k != "msg"]
        query.append(("msg", message))
        location = f"{parts.path}?{urlencode(query)}"
        return Response(b"", "303 See Other", headers=[("Location", location)])

    def _retry_ids(self, ids: Sequence[int]) -> int:
        return self.store.retry(ids) if ids else 0  # the store chunks the ids

    # -- pages ---------------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        batch_id = request.int_arg("batch", None)
        data = st.overview(self.reads, batch_id)
        if batch_id is not None and not data["batches"]:
            raise HTTPError("404 Not Found", f"no batch {batch_id}")
        return self._page(
            request, "overview.html", data=data, images=self.reads.list_recent_images(limit=8)
        )

    def batches(self, request: Request) -> Response:
        rate = self.reads.measure_throughput()
        return self._page(
            request,
            "batches.html",
            batches=st.batch_rows(self.reads, rate),
            rate=rate,
            paused=self.reads.read_pauses(),
        )

    def workers(self, request: Request) -> Response:
        return self._page(request, "workers.html", workers=st.workers(self.reads))

    def failures(self, request: Request) -> Response:
        return self._page(
            request,
            "failures.html",
            groups=self.reads.group_failures(),
            failed_jobs=self.reads.list_failed_jobs(),
            failed=self.reads.count_jobs()[JobStatus.FAILED],
        )

    def batch(self, request: Request, batch_id: str) -> Response:
        return self._page(request, "batch.html", **self._batch_jobs_data(request, batch_id))

    def _batch_jobs_data(self, request: Request, batch_id: str) -> dict[str, Any]:
        """One page of a batch's jobs, of the status asked for, with links to the pages
        either side: what the batch page and /api/batches/ID/jobs show."""
        bid = int(batch_id)
        status = request.choice_arg("status", _VISIBLE)
        page = request.int_arg("page", 1, high=MAX_PAGE) or 1
        rows = st.batch_rows(self.reads, self.reads.measure_throughput(), bid)
        if not rows:
            raise HTTPError("404 Not Found", f"no batch {bid}")
        b = rows[0]
        total = b["counts"][status] if status else b["jobs"]
        pages = max(1, -(-total // BATCH_PAGE))
        if page > pages:
            what = f"{status} jobs" if status else "jobs"
            raise HTTPError(
                "404 Not Found",
                f"batch {bid} has {pages} page{'s' if pages > 1 else ''} of {what}; "
                f"there is no page {page}",
            )
        offset = (page - 1) * BATCH_PAGE
        jobs = self.reads.list_batch_jobs(bid, status, limit=BATCH_PAGE, offset=offset)
        for j in jobs:
            j["url"] = f"/jobs/{j['id']}"

        def link(p: int) -> str:
            query = [("status", status)] if status else []
            query += [("page", str(p))] if p > 1 else []
            return f"/batches/{bid}" + (f"?{urlencode(query)}" if query else "")

        return {
            "batch": b,
            "status": status,
            "statuses": list(_VISIBLE),
            "page": page,
            "pages": pages,
            "page_size": BATCH_PAGE,
            "total": total,
            "first": offset + 1 if jobs else 0,
            "last": offset + len(jobs),
            "jobs": jobs,
            "prev": link(page - 1) if page > 1 else None,
            "next": link(page + 1) if page < pages else None,
        }

    def gallery(self, request: Request) -> Response:
        return self._page(request, "gallery.html", **self._gallery_data(request))

    def _gallery_data(self, request: Request) -> dict[str, Any]:
        """One page of images, filtered by prompt text (q), tag, batch and status: what the
        gallery page and /api/gallery show."""
        q = request.text_arg("q")
        tag = request.text_arg("tag", 100)
        batch_id = request.int_arg("batch", None)
        status = request.choice_arg("status", _VISIBLE)
        if status not in (None, JobStatus.SUCCEEDED.value):
            raise HTTPError(
                "400 Bad Request",
                f"the gallery shows images, which only succeeded jobs have; {status} jobs are "
                f"listed on each batch's page (/batches/ID?status={status})",
            )
        page = request.int_arg("page", 1, high=MAX_PAGE) or 1
        if batch_id is not None and all(b["id"] != batch_id for b in self.reads.list_batches()):
            raise HTTPError("404 Not Found", f"no batch {batch_id}")
        found = self.reads.list_gallery_images(
            text=q,
            tag=tag,
            batch_id=batch_id,
            limit=GALLERY_PAGE + 1,
            offset=(page - 1) * GALLERY_PAGE,
        )
        images = found["images"][:GALLERY_PAGE]
        for im in images:
            im["image_url"] = f"/images/{im['id']}.png"
        filters = {"q": q, "tag": tag, "batch": batch_id, "status": status}
        kept = [(k, str(v)) for k, v in filters.items() if v is not None]

        def link(p: int) -> str:
            query = kept + ([("page", str(p))] if p > 1 else [])
            return "/gallery" + (f"?{urlencode(query)}" if query else "")

        more = len(found["images"]) > GALLERY_PAGE
        searched = None
        if found["searched"] is not None:
            n = found["searched"]
            of = f" of batch {batch_id}" if batch_id is not None else ""
            searched = (
                f"searched the {n:,} most recent images{of}; older ones were not searched"
                if found["cut"]
                else f"searched all {n:,} images{of}"
            )
        return {
            "filters": filters,
            "searched": searched,
            "page": page,
            "images": images,
            "more": more,
            "prev": link(page - 1) if page > 1 else None,
            "next": link(page + 1) if more else None,
        }

    def _job_data(self, job_id: str) -> dict[str, Any]:
        try:
            job = self.reads.get_job(int(job_id))
        except JobNotFound as exc:
            raise HTTPError("404 Not Found", str(exc)) from exc
        for a in job["attempt_rows"]:
            a["denoise_per_step_s"] = _per_step(a, job["steps"])
            a["scores"] = json.loads(a.pop("scores_json") or "null")  # [[seed, score], ...]
        job["image_url"] = (
            f"/images/{job['id']}.png" if job["status"] == JobStatus.SUCCEEDED else None
        )
        job["can_retry"] = job["status"] in (JobStatus.FAILED.value, JobStatus.CANCELLED.value)
        job["can_cancel"] = job["status"] in [s.value for s in ACTIVE_STATUSES]
        job["ran"] = ran_as(job["quantization"], job["attempt_rows"])
        # A link only to the web: a model card's licence_link is whatever its README says.
        job["licence"] = from_record(job["licence"]).as_dict()
        url = job["licence"]["url"] or ""
        job["licence_link"] = url if url.startswith(("https://", "http://")) else None
        return job

    def job(self, request: Request, job_id: str) -> Response:
        return self._page(request, "job.html", job=self._job_data(job_id))

    def image(self, request: Request, job_id: str) -> Response:
        # Only the file the database names as a succeeded job's image: never a path from the URL.
        path = self.reads.find_image_file(int(job_id))
        if not path or not path.endswith(".png") or not Path(path).is_file():
            raise HTTPError("404 Not Found", f"no image for job {job_id}")
        return Response(
            Path(path).read_bytes(),
            content_type="image/png",
            headers=[("Cache-Control", "private, max-age=60")],
        )

    # -- actions -------------------------------------------------------------------------------

    def job_action(self, request: Request, job_id: str, action: str) -> Response:
        jid = int(job_id)
        try:
            n = self.store.retry([jid]) if action == "retry" else self.store.cancel([jid])
        except JobNotFound as exc:
            raise HTTPError("404 Not Found", str(exc)) from exc
        done = "retried" if action == "retry" else "cancelled"
        return self._redirect(
            request, f"job {jid} {done}" if n else f"job {jid}: nothing to {action}"
        )

    def batch_action(self, request: Request, batch_id: str, action: str) -> Response:
        bid = int(batch_id)
        if action == "retry":
            n = self._retry_ids(self.reads.list_failed_job_ids(batch_id=bid))
            return self._redirect(request, f"batch {bid}: {_jobs(n)} retried")
        n = self.store.cancel(batch_id=bid)
        return self._redirect(request, f"batch {bid}: {_jobs(n)} cancelled")

    def retry_failures(self, request: Request) -> Response:
        """Retry the failed jobs whose error groups under the form's ``error`` (all failed
        jobs without one)."""
        error = request.field("error")
        n = self._retry_ids(self.reads.list_failed_job_ids(error=error or None))
        return self._redirect(request, f"{n} failed {'job' if n == 1 else 'jobs'} retried")

    def _set_paused(self, action: str, batch_id: int | None) -> tuple[bool, str]:
        try:
            if action == "pause":
                changed = self.store.pause(batch_id)
            else:
                changed = self.store.resume(batch_id)
        except UsageError as exc:  # no such batch
            raise HTTPError("404 Not Found", str(exc)) from exc
        what = "the queue" if batch_id is None else f"batch {batch_id}"
        if action == "pause":
            return changed, f"{what} {'paused' if changed else 'was already paused'}"
        return changed, f"{what} {'resumed' if changed else 'was not paused'}"

    def batch_pause(self, request: Request, batch_id: str, action: str) -> Response:
        return self._redirect(request, self._set_paused(action, int(batch_id))[1])

    def queue_pause(self, request: Request, action: str) -> Response:
        return self._redirect(request, self._set_paused(action, None)[1])

    def _priority_changed(self, value: int, job_ids: Sequence[int], batch_id: int | None) -> int:
        try:
            return int(self.store.set_priority(value, job_ids, batch_id=batch_id))
        except UsageError as exc:  # no such job or batch
            raise HTTPError("404 Not Found", str(exc)) from exc

    def batch_priority(self, request: Request, batch_id: str) -> Response:
        """The form on a batch page: its pending jobs get the new priority."""
        value = self._priority(request)
        n = self._priority_changed(value, (), int(batch_id))
        return self._redirect(request, f"batch {batch_id}: {_jobs(n)} now at priority {value}")

    def job_priority(self, request: Request, job_id: str) -> Response:
        value = self._priority(request)
        n = self._priority_changed(value, [int(job_id)], None)
        what = (
            f"now at priority {value}" if n else "unchanged (only a pending job's priority changes)"
        )
        return self._redirect(request, f"job {job_id}: {what}")

    # -- JSON API ------------------------------------------------------------------------------

    def api_token(self, request: Request) -> Response:
        """The token POSTs carry (as a ``token`` field or an ``X-Orchestrate-Token`` header).
        Another site's page cannot read it: this answer has no CORS headers."""
        return self._json({"token": self.token, "header": "X-Orchestrate-Token"})

    def api_paused(self, request: Request) -> Response:
        return self._json({"generated_at": time.time(), **self.reads.read_pauses()})

    def api_queue_pause(self, request: Request, action: str) -> Response:
        changed, message = self._set_paused(action, None)
        return self._json({"changed": changed, "message": message, **self.reads.read_pauses()})

    def api_batch_pause(self, request: Request, batch_id: str, action: str) -> Response:
        changed, message = self._set_paused(action, int(batch_id))
        return self._json({"changed": changed, "message": message, **self.reads.read_pauses()})

    @staticmethod
    def _priority(request: Request) -> int:
        raw = (request.field("priority") or "").strip()
        if not re.fullmatch(r"[+-]?\d{1,10}", raw):
            raise HTTPError("400 Bad Request", f"priority must be a whole number (got {raw!r})")
        try:
            return check_priority(int(raw))
        except UsageError as exc:
            raise HTTPError("400 Bad Request", str(exc)) from exc

    def _set_priority(self, value: int, job_ids: Sequence[int], batch_id: int | None) -> Response:
        n = self._priority_changed(value, job_ids, batch_id)
        return self._json({"changed": n, "priority": value})

    def api_batch_priority(self, request: Request, batch_id: str) -> Response:
        """Every pending job of the batch gets the form's (or JSON body's) ``priority``."""
        return self._set_priority(self._priority(request), (), int(batch_id))

    def api_job_priority(self, request: Request, job_id: str) -> Response:
        """The job, if pending, gets ``priority``; ``changed`` is 0 when it is not."""
        return self._set_priority(self._priority(request), [int(job_id)], None)

    def api_overview(self, request: Request) -> Response:
        return self._json(st.overview(self.reads, request.int_arg("batch", None)))

    def api_batches(self, request: Request) -> Response:
        rate = self.reads.measure_throughput()
        rows = st.batch_rows(self.reads, rate)
        return self._json(
            {
                "generated_at": time.time(),
                "throughput": {k: v for k, v in rate.items() if k != "by_batch"},
                "batches": rows,
            }
        )

    def api_workers(self, request: Request) -> Response:
        now = time.time()
        return self._json({"generated_at": now, "workers": st.workers(self.reads, now)})

    def api_batch_jobs(self, request: Request, batch_id: str) -> Response:
        data = self._batch_jobs_data(request, batch_id)
        return self._json({"generated_at": time.time(), **data})

    def api_failures(self, request: Request) -> Response:
        return self._json(
            {
                "generated_at": time.time(),
                "failed": self.reads.count_jobs()[JobStatus.FAILED],
                "groups": self.reads.group_failures(),
                "failed_jobs": self.reads.list_failed_jobs(),
            }
        )

    def api_gallery(self, request: Request) -> Response:
        return self._json(self._gallery_data(request))

    def api_job(self, request: Request, job_id: str) -> Response:
        return self._json(self._job_data(job_id))
