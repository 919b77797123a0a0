"""Fault injection: named points where a chaos test makes this process die or an I/O fail, and
a Redis client that fails chosen calls. Inert unless ``ORCHESTRATE_FAULTS`` is set (only the
tests and ``benchmarks/chaos.py`` set it); the spec is read once per process.

The spec is ``;``-separated rules:

- ``POINT=ACTION`` or ``POINT=ACTION@N``: at the N-th time (default 1st) this process reaches
  ``point(POINT)``, do ACTION; ``@N+``: the N-th time and every time after. ACTION is
  ``kill`` (SIGKILL itself), ``exit`` (``os._exit(70)``), ``error`` (raise RuntimeError),
  ``stop`` (SIGSTOP itself: a process hung at that point until someone sends SIGCONT), or an
  errno name in lower case (``enospc``, ``eacces``, ``erofs``, ``enotdir`` ...: raise the
  OSError the system would).
- ``redis:SITE=error@N``: the N-th Redis call from SITE raises ``ConnectionError``. SITE is
  ``function.command`` (``_take_events.lmove``, ``_finish.execute`` for a pipeline), the
  function being the nearest caller in this project's code; ``redis:*=error@N`` counts every
  call.
- ``record=PATH``: append every Redis call site to PATH (one per line), so a test can list
  them and then fail each in turn.
- ``fired=PATH``: append the name of every rule that fires to PATH (one per line, before its
  action), so a test injecting several faults at once knows which it reached.
- ``backoff=SECONDS``: every wait between tries (``contract.waiting.Backoff``) is at most
  SECONDS, so that a test failing each Redis call site in turn does not spend its time in
  waits it does not test (what happens after an error is the same, only sooner).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections import Counter
from typing import Any

_lock = threading.Lock()
_hits: Counter[str] = Counter()
_rules: dict[str, tuple[str, int, bool]] | None = None
_record: str | None = None
_fired: str | None = None
_backoff: float | None = None


def _load() -> dict[str, tuple[str, int, bool]]:
    global _rules, _record, _fired, _backoff
    if _rules is None:
        rules: dict[str, tuple[str, int, bool]] = {}
        for part in filter(None, (p.strip() for p in os.environ.get(_ENV, "").split(";"))):
            name, _, action = part.partition("=")
            if name == "record":
                _record = action
                continue
            if name == "fired":
                _fired = action
                continue
            if name == "backoff":
                _backoff = float(action)
                continue
            action, _, nth = action.partition("@")
            rules[name] = (action, int(nth.rstrip("+") or 1), nth.endswith("+"))
        _rules = rules
    return _rules


_ENV = "ORCHESTRATE_FAULTS"


def active() -> bool:
    return bool(os.environ.get(_ENV))


def configure(spec: str | None) -> None:
    """Set (or with None clear) this process's rules, as if ORCHESTRATE_FAULTS said so."""
    global _rules, _record, _fired, _backoff
    if spec:
        os.environ[_ENV] = spec
    else:
        os.environ.pop(_ENV, None)
    _rules, _record, _fired, _backoff = None, None, None, None
    _hits.clear()


def backoff_at_most(seconds: float) -> float:
    """``seconds``, or the ``backoff=`` rule's ceiling when that is less."""
    if not active():
        return seconds
    _load()
    return seconds if _backoff is None else min(seconds, _backoff)


def _append(path: str, line: str) -> None:
    with _lock, open(path, "a") as fh:
        fh.write(line + "\n")


def _fire(action: str, name: str) -> None:
    if _fired:
        _append(_fired, name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action == "exit":
        os._exit(70)
    elif action.isalpha() and action.islower() and hasattr(errno, action.upper()):
        code = getattr(errno, action.upper())
        raise OSError(code, f"{os.strerror(code)} (injected at {name})")
    elif action == "error":
        raise RuntimeError(f"fault injected at {name}")
    elif action == "connection":
        import redis

        raise redis.exceptions.ConnectionError(f"fault injected at {name}")


def _count(name: str) -> str | None:
    """The action to take now at ``name``, if its rule says so."""
    rules = _load()
    if name not in rules:
        return None
    action, nth, after = rules[name]
    with _lock:
        _hits[name] += 1
        return action if _hits[name] == nth or (after and _hits[name] > nth) else None


def point(name: str) -> None:
    """A place where a chaos test may inject a fault; nothing at all otherwise."""
    if not os.environ.get(_ENV):
        return
    action = _count(name)
    if action is not None:
        _fire(action, name)


# -- Redis ---------------------------------------------------------------------------------


def _site(command: str) -> str:
    """``function.command`` for the nearest caller in this project's code."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        ours = any(f"/{package}/" in path for package in ("contract", "orchestrator", "workers"))
        if ours and not path.endswith("faults.py"):
            return f"{frame.f_code.co_name}.{command.lower()}"
        frame = frame.f_back  # type: ignore[assignment]
    return f"rq.{command.lower()}"


def _redis_fault(command: str) -> None:
    site = _site(command)
    _load()
    if _record:
        _append(_record, site)
    for name in (f"redis:{site}", "redis:*"):
        action = _count(name)
        if action is not None:
            _fire("connection", name)


def redis_class() -> Any:
    """``redis.Redis``, or with faults active a subclass whose calls can be failed."""
    import redis

    if not active():
        return redis.Redis

    class FaultyPipeline(redis.client.Pipeline):
        def execute(self, raise_on_error: bool = True) -> Any:
            _redis_fault("execute")
            return super().execute(raise_on_error)

    class FaultyRedis(redis.Redis):
        def execute_command(self, *args: Any, **options: Any) -> Any:
            _redis_fault(str(args[0]).split()[0] if args else "?")
            return super().execute_command(*args, **options)

        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
            return FaultyPipeline(
                self.connection_pool, self.response_callbacks, transaction, shard_hint
            )

    return FaultyRedis
