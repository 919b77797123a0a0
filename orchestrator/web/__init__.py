"""The web dashboard: server-rendered pages and a JSON API over the job database.

``orchestrate dashboard`` serves it with :func:`serve`; :class:`DashboardApp` is the WSGI
application itself (for tests, or another WSGI server).
"""

from __future__ import annotations

from orchestrator.web.app import DashboardApp
from orchestrator.web.server import make_server, serve

__all__ = ["DashboardApp", "make_server", "serve"]
