"""The contract between the coordinator and RQ workers: Redis key names, queue names, the task's
dotted path, and the events a worker pushes back.

Workers never see the database. The coordinator enqueues a JSON payload as an RQ job; the
worker runs it and pushes events onto one Redis list (``started``, ``result``, ``failed``,
``released``), with the PNG bytes under their own key. Everything is JSON or raw bytes: no
pickle crosses machines.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import urlsplit

PREFIX = "orchestrate"
TASK = "workers.rq_worker.generate"  # the only function a worker will execute
SERIALIZER = "rq.serializers.JSONSerializer"
QUEUES_KEY = f"{PREFIX}:queues"  # set of every model queue the coordinator has used
EVENTS_KEY = f"{PREFIX}:events"
PROCESSING_KEY = f"{PREFIX}:events:processing"
WORKER_KEY = f"{PREFIX}:worker:"  # + worker name: a hash with the worker's status, with a TTL

DISPATCH_PREFIX = "rq:"  # lease_owner of a job dispatched through Redis: rq:<rq job id>


def queue_for(model: str) -> str:
    """The RQ queue of a model: readable, and unique per model string."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[-40:] or "model"
    return f"{PREFIX}.{slug}.{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def image_key(rq_id: str) -> str:
    return f"{PREFIX}:image:{rq_id}"


def heartbeat_key(rq_id: str) -> str:
    return f"{PREFIX}:hb:{rq_id}"


def cancel_key(rq_id: str) -> str:
    return f"{PREFIX}:cancel:{rq_id}"


def encode_event(kind: str, rq_id: str, **fields: Any) -> bytes:
    return json.dumps({"type": kind, "rq_id": rq_id, **fields}, sort_keys=True).encode()


def decode_event(raw: bytes) -> dict[str, Any]:
    event = json.loads(raw)
    if not isinstance(event, dict) or "type" not in event or "rq_id" not in event:
        raise ValueError(f"not an event: {raw[:200]!r}")
    return event


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


def connect(url: str) -> Any:
    """A Redis client (bytes in, bytes out) for ``redis://``, ``rediss://`` (TLS) or
    ``unix://`` URLs, with an ACL user and password if the URL has them. Raises ConnectionError
    with the URL (password hidden) when the server does not answer."""
    import redis

    try:
        client = redis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)
        client.ping()
    except redis.exceptions.AuthenticationError as exc:  # a subclass of ConnectionError
        raise ConnectionError(f"Redis at {redact(url)} refused the credentials: {exc}") from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ValueError) as exc:
        raise ConnectionError(f"cannot reach Redis at {redact(url)}: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        raise ConnectionError(f"Redis at {redact(url)} answered with an error: {exc}") from exc
    return client
