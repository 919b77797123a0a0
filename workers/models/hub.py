"""The Hugging Face hub as this machine sees it: the cache, whether the hub can be reached, and
whether a model id is there. Each question costs at most one quick look, never
huggingface_hub's own retries.

Asked of the network unprepared, huggingface_hub retries a failed request five times with
backoff (about 23 s) and logs two lines a try; on a machine without a network every load of a
hub id that is not cached would pay that. So the load asks here first: offline (``HF_HUB_OFFLINE``
set, or the hub's host not answering a TCP connect within seconds) it loads from the cache only
(``local_files_only``), and a model neither cached nor reachable is refused in one line.

Nothing here imports torch or diffusers.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from workers.models import BUILTIN_MODELS

REACH_TIMEOUT_S = 3.0  # a TCP connect to the hub; a machine without a network fails at once
REACH_MEMORY_S = 60.0  # how long an answer about the network is kept (one per model load)
EXISTS_TIMEOUT_S = 10.0  # one request asking the hub whether a model id exists
NEAR_MISS = 0.6  # difflib ratio from which a name is taken for a typo of a built-in one
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_TRUE = {"1", "ON", "YES", "TRUE"}

_reached: dict[str, tuple[float, bool]] = {}  # endpoint -> (when asked, the answer)


def offline_by_setting() -> bool:
    """Whether the user has said there is no hub here (``HF_HUB_OFFLINE``), as huggingface_hub
    reads it (at import) or as the environment says now."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in _TRUE


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def reachable(timeout_s: float = REACH_TIMEOUT_S) -> bool:
    """Whether the hub's host (``HF_ENDPOINT``, huggingface.co by default) takes a TCP
    connection within ``timeout_s``: a name that does not resolve or a refused connection
    answers at once; a firewall that drops packets takes the timeout. Behind a proxy the hub
    is not looked at directly: it is taken as reachable (the load then says what went wrong).
    The answer is kept for a minute."""
    endpoint = _endpoint()
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return True
    now = time.monotonic()
    known = _reached.get(endpoint)
    if known is not None and now - known[0] < REACH_MEMORY_S:
        return known[1]
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (80 if parts.scheme == "http" else 443)
    answer: list[bool] = []

    def connect() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    probe = threading.Thread(target=connect, name="hub-reachable", daemon=True)
    probe.start()
    probe.join(timeout_s + 0.5)
    result = bool(answer and answer[0])
    _reached[endpoint] = (time.monotonic(), result)
    return result


def forget_reachability() -> None:
    """Ask the network again next time (tests; a worker after a long outage)."""
    _reached.clear()


def online() -> bool:
    """Whether a load may use the hub: not offline by setting, and the host answers."""
    return not offline_by_setting() and reachable()


def cached_file(repo_id: str, name: str = "model_index.json") -> Path | None:
    """A file of a hub model in this machine's Hugging Face cache, if it is there."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, name)
    except Exception:  # not a valid repo id, an unreadable cache: not cached
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def is_cached(repo_id: str) -> bool:
    return cached_file(repo_id) is not None


def exists(repo_id: str, timeout_s: float = EXISTS_TIMEOUT_S) -> bool | None:
    """Whether the hub has a model ``repo_id`` (gated ones count), asked once without retries:
    False only when the hub says it has none (or none this machine's token may see); None when
    it cannot be told (offline, a timeout, a server error)."""
    if not online():
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=timeout_s)
    except GatedRepoError:
        return True
    except RepositoryNotFoundError:
        return False
    except Exception:  # a network or server error: the load will tell
        return None
    return True


def near_builtin(model: str) -> list[str]:
    """The built-in model names ``model`` is a near miss of (``tiny-sd3``, ``Tiny``), best
    first (ties in the built-ins' order); only for names without an owner, which real hub
    ids of diffusers models have."""
    if "/" in model or model in BUILTIN_MODELS:
        return []
    scores = {
        name: difflib.SequenceMatcher(None, model.lower(), name).ratio() for name in BUILTIN_MODELS
    }
    best = max(scores.values(), default=0.0)
    if best < NEAR_MISS:
        return []
    return [name for name, score in scores.items() if score >= best - 1e-9]


def did_you_mean(model: str) -> str:
    """`` (did you mean 'tiny'?)`` for a near miss of a built-in name, else nothing."""
    close = near_builtin(model)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{name}'" for name in close) + "?)"


def unreachable_reason() -> str:
    """Why the hub cannot be used here, in a few words."""
    if offline_by_setting():
        return "HF_HUB_OFFLINE=1"
    return f"{urlsplit(_endpoint()).hostname} does not answer"


def _not_builtin(model: str) -> str:
    """The start of a reason for a name without an owner, which is more often a typo of a
    built-in name than a hub id."""
    if "/" in model:
        return ""
    return f"not a built-in model{did_you_mean(model)} or a folder on this machine, and "


def not_found_reason(model: str) -> str:
    """Why a model id that is no folder here and not cached cannot be loaded on a machine
    that cannot reach the hub."""
    return (
        f"{_not_builtin(model)}not in this machine's Hugging Face cache, and the hub cannot be "
        f"reached ({unreachable_reason()}): download it where there is a network "
        f"(`hf download {model}`) or give a local diffusers folder"
    )


def missing_on_hub_reason(model: str) -> str:
    """Why a model id the hub says it does not have cannot be loaded."""
    return (
        f"{_not_builtin(model)}not a model on the Hugging Face hub (or a private one: "
        "`hf auth login` with a token that may read it)"
    )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """huggingface_hub's own warnings (each retry of a request, twice) kept out of the log
    while a model loads: the load's outcome is said once, by us."""
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        log.setLevel(level)
