"""Serving the dashboard with the standard library's WSGI server, one thread per request."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as _make_server

from orchestrator.store import JobStore
from orchestrator.web.app import LOOPBACK_HOSTS, DashboardApp

logger = logging.getLogger(__name__)


class _Server(ThreadingMixIn, WSGIServer):
    # Images load in parallel; a slow one must not hold up the page.
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the log at debug level rather than to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(
    store: JobStore, host: str = "127.0.0.1", port: int = 8080, *, refresh_s: float = 5.0
) -> tuple[WSGIServer, DashboardApp]:
    """A bound, not yet serving server and its app. On a loopback address the app accepts
    only loopback Host names; elsewhere (the user chose to expose it) any."""
    app = DashboardApp(
        store,
        refresh_s=refresh_s,
        allowed_hosts=LOOPBACK_HOSTS | {host} if is_loopback(host) else None,
    )
    server_class = _Server6 if ":" in host else _Server
    server = _make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    return server, app


def url_of(server: WSGIServer) -> str:
    raw, port = server.server_address[:2]
    host = raw.decode() if isinstance(raw, bytes) else str(raw)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(
    store: JobStore,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    refresh_s: float = 5.0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C returns normally)."""
    server, _app = make_server(store, host, port, refresh_s=refresh_s)
    try:
        if on_ready is not None:
            on_ready(url_of(server))
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
