"""Completion hooks: a URL and a command hear about a finished batch."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Cli, write

pytestmark = pytest.mark.slow
IN_PROCESS = True  # commands in-process (tests/e2e/conftest.py)


def test_run_calls_on_done_and_notify_url(cli: Cli, tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        write(tmp_path / "j.csv", "prompt,seed,steps,num_images\nhook,1,2,2\n")
        cli(
            "run",
            "j.csv",
            "--notify-url",
            f"http://127.0.0.1:{server.server_port}/done",
            "--on-done",
            'cat > done.json; echo "$ORCHESTRATE_BATCH_ID $ORCHESTRATE_SUCCEEDED $ORCHESTRATE_TOTAL" > env.txt',
        )
    finally:
        server.shutdown()
        server.server_close()
    summary = json.loads((tmp_path / "done.json").read_text())
    assert summary["event"] == "batch_done" and summary["batch_id"] == 1
    assert summary["counts"]["succeeded"] == 2
    assert (tmp_path / "env.txt").read_text().split() == ["1", "2", "2"]
    assert received == [summary]
