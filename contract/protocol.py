"""The contract between the coordinator and RQ workers: Redis key names, queue names, the task's
dotted path, the job payload and the events a worker pushes back, each checked in full.

Workers never see the database. The coordinator enqueues a JSON payload as an RQ job; the
worker runs it and pushes events onto one Redis list (``started``, ``result``, ``failed``,
``released``), with the PNG bytes under their own key. Everything is JSON or raw bytes: no
pickle crosses machines.

Every event names its dispatch (``rq_id``) and carries the dispatch's ``token``, which only
the payload of that dispatch holds: a result for a job some other dispatch holds, or with a
wrong token, is not recorded. Where a shared secret is configured (``ORCHESTRATE_SECRET``),
the coordinator signs each payload and the worker each event (HMAC-SHA256 over the canonical
JSON), so that a Redis client without the secret can neither forge a result nor have a job
run. A message that fails any check raises ``BadMessage`` with the reason: the coordinator
dead-letters it, a worker refuses it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from contract import faults
from contract.job import RESULT_COUNTS, RESULT_TEXT, RESULT_TIMINGS
from contract.limits import MAX_EXTRA, MAX_JUDGE_NAME, QUALITY_TRIES, SCORE, SEED
from contract.waiting import Backoff, patiently

PREFIX = "orchestrate"
TASK = "workers.rq.worker.generate"  # the only function a worker will execute
QUEUES_KEY = f"{PREFIX}:queues"  # set of every model queue the coordinator has used
EVENTS_KEY = f"{PREFIX}:events"
PROCESSING_KEY = f"{PREFIX}:events:processing"
DEAD_KEY = f"{PREFIX}:events:dead"  # refused events, newest last, capped at DEAD_KEPT
DEAD_KEPT = 1000
WORKER_KEY = f"{PREFIX}:worker:"  # + worker name: a hash with the worker's status, with a TTL
HEARTBEAT_PATTERN = f"{PREFIX}:hb:*"

DISPATCH_PREFIX = "rq:"  # lease_owner of a job dispatched through Redis: rq:<rq id>/<token>
SECRET_ENV = "ORCHESTRATE_SECRET"

# Between tries while Redis is away, for a worker or a coordinator: 1 s, doubling, up to 5 s.
REDIS_BACKOFF = Backoff(1.0, factor=2.0, cap=5.0)
MAX_TEXT = 2000  # error texts and other strings are cut to this many characters
_RQ_ID = re.compile(r"^orc-(\d{1,12})-(\d{1,6})-[0-9a-f]{6}$")
_HEX = re.compile(r"^[0-9a-f]+$")


class BadMessage(ValueError):
    """A message that does not follow the protocol (malformed, foreign, forged)."""


# -- names -------------------------------------------------------------------------------------


def queue_for(model: str) -> str:
    """The RQ queue of a model: readable, and unique per model string."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[-40:] or "model"
    return f"{PREFIX}.{slug}.{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def rq_id_for(job_id: int, attempt: int, nonce: str) -> str:
    return f"orc-{int(job_id)}-{int(attempt)}-{nonce}"


def lease_owner(rq_id: str, token: str) -> str:
    return f"{DISPATCH_PREFIX}{rq_id}/{token}"


def split_owner(owner: str) -> tuple[str, str]:
    """(rq id, token) of a dispatch's lease owner."""
    rq_id, _, token = owner[len(DISPATCH_PREFIX) :].partition("/")
    return rq_id, token


def image_key(rq_id: str) -> str:
    return f"{PREFIX}:image:{rq_id}"


def heartbeat_key(rq_id: str) -> str:
    return f"{PREFIX}:hb:{rq_id}"


def cancel_key(rq_id: str) -> str:
    return f"{PREFIX}:cancel:{rq_id}"


# -- signing -----------------------------------------------------------------------------------


def secret_from_env() -> bytes | None:
    value = os.environ.get(SECRET_ENV)
    return value.encode() if value else None


def _canonical(fields: dict[str, Any]) -> bytes:
    body = {k: v for k, v in fields.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(fields: dict[str, Any], secret: bytes | None) -> dict[str, Any]:
    """``fields`` with its ``sig`` (none without a secret)."""
    if not secret:
        return fields
    return {**fields, "sig": hmac.new(secret, _canonical(fields), hashlib.sha256).hexdigest()}


def check_signature(fields: dict[str, Any], secret: bytes | None) -> None:
    if not secret:
        return
    sig = fields.get("sig")
    if not isinstance(sig, str):
        raise BadMessage("unsigned, and a shared secret is configured")
    want = hmac.new(secret, _canonical(fields), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(sig, want):
        raise BadMessage("bad signature")


# -- field checks ------------------------------------------------------------------------------


def _text(value: Any, name: str, limit: int = 255) -> str:
    if not isinstance(value, str):
        raise BadMessage(f"{name} must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise BadMessage(f"{name} is longer than {limit} characters")
    return value


def _int(value: Any, name: str, low: int = 0, high: int = 2**53) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadMessage(f"{name} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise BadMessage(f"{name} is out of range ({value})")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadMessage(f"{name} must be a finite number")
    return float(value)


def _score(value: Any, name: str) -> float:
    score = _number(value, name)
    if not SCORE.min <= score <= SCORE.max:
        raise BadMessage(f"{name} must be from {SCORE.min} to {SCORE.max} ({score})")
    return score


def check_scores(value: Any, name: str) -> list[list[Any]]:
    """A gated attempt's tries: at most ``QUALITY_TRIES.max`` ``[seed, score]`` pairs."""
    if not isinstance(value, list) or len(value) > QUALITY_TRIES.max:
        raise BadMessage(f"{name} must be a list of at most {QUALITY_TRIES.max} [seed, score]")
    out = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise BadMessage(f"{name} must hold [seed, score] pairs")
        out.append([_int(pair[0], f"{name} seed", *SEED), _score(pair[1], f"{name} score")])
    return out


def _hex(value: Any, name: str, length: int | None = None) -> str:
    value = _text(value, name, 128)
    if not _HEX.match(value) or (length is not None and len(value) != length):
        raise BadMessage(f"{name} must be {length or 'some'} hex digits")
    return value


def is_dispatch_id(value: str) -> bool:
    return bool(_RQ_ID.match(value))


def rq_job_id(value: Any) -> tuple[str, int, int]:
    """A dispatch id and the job id and attempt number it names."""
    rq_id = _text(value, "rq_id", 64)
    m = _RQ_ID.match(rq_id)
    if m is None:
        raise BadMessage(f"rq_id {rq_id[:64]!r} is not one of this project's dispatch ids")
    return rq_id, int(m[1]), int(m[2])


# What a result may report, and its type: the task's own result fields.
_RESULT_TEXT = RESULT_TEXT
_RESULT_INT = RESULT_COUNTS
_RESULT_NUMBERS = RESULT_TIMINGS


def check_result(value: Any) -> dict[str, Any]:
    """A worker's result: known keys of known types (unknown keys are dropped)."""
    if not isinstance(value, dict):
        raise BadMessage(f"result must be an object, not {type(value).__name__}")
    out: dict[str, Any] = {}
    for key in _RESULT_TEXT:
        if value.get(key) is not None:
            out[key] = _text(value[key], f"result.{key}", 64)
    for key in _RESULT_INT:
        if value.get(key) is not None:
            out[key] = _int(value[key], f"result.{key}", 0, 1_000_000)
    for key in _RESULT_NUMBERS:
        if value.get(key) is not None:
            out[key] = _number(value[key], f"result.{key}")
    versions = value.get("versions")
    if versions is not None:
        if not isinstance(versions, dict) or len(versions) > 64:
            raise BadMessage("result.versions must be an object of at most 64 entries")
        out["versions"] = {
            _text(k, "result.versions key", 64): _text(v, "result.versions value", 128)
            for k, v in versions.items()
        }
    # A gated job's verdict: all of it or none of it.
    quality = [k for k in ("score", "image_seed", "judge", "scores") if value.get(k) is not None]
    if quality:
        if len(quality) != 4:
            raise BadMessage(f"result has {', '.join(quality)} of a quality gate, not all four")
        out["score"] = _score(value["score"], "result.score")
        out["image_seed"] = _int(value["image_seed"], "result.image_seed", *SEED)
        out["judge"] = _text(value["judge"], "result.judge", MAX_JUDGE_NAME)
        out["scores"] = check_scores(value["scores"], "result.scores")
    return out


# -- events ------------------------------------------------------------------------------------

# "refused": a worker would not run a job (foreign, pickled, with callbacks...); it names
# whatever job id it saw, so it carries no dispatch of ours.
EVENT_TYPES = ("started", "result", "failed", "released", "refused")


@dataclass(frozen=True)
class Event:
    """A checked event from a worker."""

    type: str
    rq_id: str
    job_id: int
    token: str
    worker: str
    host: str
    pid: int | None
    sha256: str | None = None  # result
    size: int | None = None  # result: bytes of the PNG under image_key(rq_id)
    result: dict[str, Any] = field(default_factory=dict)  # result
    error: str | None = None  # failed, released
    retryable: bool = True  # failed
    scores: list[list[Any]] | None = None  # failed: a quality gate's tries, none passing

    @property
    def owner(self) -> str:
        return lease_owner(self.rq_id, self.token)


def encode_event(kind: str, rq_id: str, *, secret: bytes | None = None, **fields: Any) -> bytes:
    body = sign({"type": kind, "rq_id": rq_id, **fields}, secret)
    return json.dumps(body, sort_keys=True).encode()


def decode_event(raw: bytes, secret: bytes | None = None) -> Event:
    """Parse and check one event in full (types, not only presence); raise BadMessage."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadMessage("not a JSON object")
    kind = data.get("type")
    if kind not in EVENT_TYPES:
        raise BadMessage(f"unknown event type {str(kind)[:40]!r}")
    check_signature(data, secret)
    if kind == "refused":
        return Event(
            type=kind,
            rq_id=_text(data.get("rq_id"), "rq_id", 200),
            job_id=0,
            token="",
            worker=_text(data.get("worker"), "worker"),
            host=_text(data.get("host"), "host"),
            pid=None,
            error=_text(data.get("error"), "error", 1000),
        )
    rq_id, job_id, _attempt = rq_job_id(data.get("rq_id"))
    if _int(data.get("job_id"), "job_id") != job_id:
        raise BadMessage(f"job_id {data.get('job_id')} does not match rq_id {rq_id}")
    pid = data.get("pid")
    common = {
        "type": kind,
        "rq_id": rq_id,
        "job_id": job_id,
        "token": _hex(data.get("token"), "token", 32),
        "worker": _text(data.get("worker"), "worker"),
        "host": _text(data.get("host"), "host"),
        "pid": None if pid is None else _int(pid, "pid", 0, 2**31),
    }
    if kind == "result":
        return Event(
            **common,
            sha256=_hex(data.get("sha256"), "sha256", 64),
            size=_int(data.get("size"), "size", 1),
            result=check_result(data.get("result")),
        )
    if kind in ("failed", "released"):
        error = data.get("error")
        error = "" if error is None else _text(error, "error", 100_000)[:MAX_TEXT]
        retryable = data.get("retryable", True)
        if not isinstance(retryable, bool):
            raise BadMessage("retryable must be true or false")
        scores = data.get("scores")
        if scores is not None:
            scores = check_scores(scores, "scores")
        return Event(**common, error=error, retryable=retryable, scores=scores)
    return Event(**common)


# -- the payload ---------------------------------------------------------------------------------

# Field types of a job payload (PAYLOAD_FIELDS of the store, plus the dispatch's).
_PAYLOAD_TYPES: dict[str, type] = {
    "id": int,
    "batch_id": int,
    "prompt": str,
    "negative_prompt": str,
    "seed": int,
    "steps": int,
    "guidance_scale": float,
    "width": int,
    "height": int,
    "scheduler": str,
    "model": str,
    "quantization": str,
    "output_name": str,
    "output_dir": str,
    "line": int,
    "image_index": int,
    "tags": str,
    "extra": dict,
    "attempt": int,
    "token": str,
}
# Fields only a gated job's payload has (``workers.quality.GATE_FIELDS``): both or neither;
# and, with them, the gate's round (how many attempts failed it), which a coordinator from
# before rounds were counted does not send.
_GATE_TYPES: dict[str, type] = {"min_score": float, "quality_tries": int}
_GATE_OPTIONAL = ("gate_round",)


def check_payload(payload: Any, secret: bytes | None = None) -> dict[str, Any]:
    """A job payload exactly as the coordinator makes it: the known fields, each of its
    type, nothing else (and signed, where a secret is configured). Raise BadMessage."""
    if not isinstance(payload, dict):
        raise BadMessage(f"the payload must be an object, not {type(payload).__name__}")
    check_signature(payload, secret)
    fields = {k: v for k, v in payload.items() if k != "sig"}
    gate = set(_GATE_TYPES) if set(_GATE_TYPES) & set(fields) else set()
    optional = set(_GATE_OPTIONAL) if gate else set()
    unknown = sorted(set(fields) - set(_PAYLOAD_TYPES) - gate - optional)
    missing = sorted((set(_PAYLOAD_TYPES) | gate) - set(fields))
    if unknown or missing:
        raise BadMessage(f"payload fields: unknown {unknown}, missing {missing}")
    if gate:
        fields["min_score"] = _score(fields["min_score"], "min_score")
        _int(fields["quality_tries"], "quality_tries", *QUALITY_TRIES)
        if "gate_round" in fields:
            _int(fields["gate_round"], "gate_round", 0, 2**31)
    for name, kind in _PAYLOAD_TYPES.items():
        value = fields[name]
        if kind is float:
            fields[name] = _number(value, name)
        elif kind is int:
            _int(value, name, 0, 2**53)
        elif kind is dict:
            if not isinstance(value, dict) or len(value) > MAX_EXTRA:
                raise BadMessage(f"{name} must be an object of at most {MAX_EXTRA} entries")
            for k, v in value.items():
                _text(k, f"{name} key", 255)
                _text(v, f"{name}.{k[:40]}", 20_000)
        else:
            _text(value, name, 20_000)
    _hex(fields["token"], "token", 32)
    return fields


# -- connecting ----------------------------------------------------------------------------------


def redact(url: str) -> str:
    """The Redis URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    netloc = f"{parts.username}:***@{netloc}" if parts.username else f":***@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


class Unreachable(ConnectionError):
    """Redis did not answer (as opposed to refusing the credentials): worth waiting for."""


def address(url: str) -> str:
    """Where a Redis URL points, ``host:port`` (or a socket path): never the password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    try:
        port = parts.port or 6379
    except ValueError:
        port = "?"  # type: ignore[assignment]
    return f"{parts.hostname or 'localhost'}:{port}"


def unresolved_host(exc: BaseException) -> str | None:
    """Why a connection failed when it is the host name's fault, for the user: a name that does
    not exist is most likely a typo in the URL, which waiting will not fix; None otherwise."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            if cause.errno == socket.EAI_AGAIN:
                return "its host name could not be looked up (is DNS answering?)"
            return "its host name does not resolve, most likely a typo in the URL, not an outage"
        cause = cause.__cause__ or cause.__context__
    return None


def _took(seconds: float) -> str:
    s = round(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m{s % 60:02d}s"


class Waiting:
    """Says that Redis is being waited for: at the first failure, then again at a growing
    interval (``first`` seconds, doubling up to ``most``), each time with what was tried and
    for how long, so that a wrong URL is not mistaken for a quiet night."""

    def __init__(
        self, say: Any, where: str, *, every: float, first: float = 10.0, most: float = 300.0
    ) -> None:
        self.say = say
        self.where = where
        self.every = every
        self.first = first
        self.most = most
        self.since: float | None = None
        self._next = 0.0
        self._gap = first

    def failed(self, exc: BaseException, every: float | None = None) -> None:
        """One failed try (``every``: seconds to the next, when not the usual)."""
        now = time.monotonic()
        why = unresolved_host(exc) or str(exc).rstrip(".")
        if self.since is None:
            self.since, self._next, self._gap = now, now + self.first, self.first
            self.say(
                f"cannot reach Redis at {self.where}: {why}; waiting for it, trying every "
                f"{every or self.every:g}s"
            )
        elif now >= self._next:
            self._gap = min(self._gap * 2, self.most)
            self._next = now + self._gap
            self.say(
                f"still waiting for Redis at {self.where} after {_took(now - self.since)}: {why}"
            )

    def ended(self) -> float | None:
        """Seconds it was waited for, if it was (and forget it)."""
        if self.since is None:
            return None
        waited, self.since = time.monotonic() - self.since, None
        return waited


def connect_patiently(url: str, *, say: Any = None, every: float = 2.0) -> Any:
    """``connect``, waiting while Redis does not answer (a service started during an outage
    waits for it rather than exiting), and saying so again at a growing interval; wrong
    credentials or URLs still raise at once."""
    waiting = Waiting(say or (lambda _m: None), address(url), every=every)
    client = patiently(
        lambda: connect(url),
        retry_on=(Unreachable,),
        backoff=Backoff.every(every),
        on_failure=lambda exc, _delay: waiting.failed(exc.__cause__ or exc),
    )
    waited = waiting.ended()
    if waited is not None and say is not None:
        say(f"reached Redis at {address(url)} after {_took(waited)}")
    return client


def connect(url: str, *, socket_timeout: float | None = 30.0) -> Any:
    """A Redis client (bytes in, bytes out) for ``redis://``, ``rediss://`` (TLS) or
    ``unix://`` URLs, with an ACL user and password if the URL has them. Raises ConnectionError
    with the URL (password hidden) when the server does not answer."""
    import redis

    try:
        client = faults.redis_class().from_url(
            url,
            health_check_interval=30,
            socket_keepalive=True,
            socket_connect_timeout=10,
            socket_timeout=socket_timeout,
        )
        client.ping()
    except redis.exceptions.AuthenticationError as exc:  # a subclass of ConnectionError
        raise ConnectionError(f"Redis at {redact(url)} refused the credentials: {exc}") from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        why = unresolved_host(exc) or str(exc)
        raise Unreachable(f"cannot reach Redis at {redact(url)}: {why}") from exc
    except ValueError as exc:
        raise ConnectionError(f"not a Redis URL: {redact(url)}: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        raise ConnectionError(f"Redis at {redact(url)} answered with an error: {exc}") from exc
    return client
