"""Completion hooks: tell someone when a batch finishes (users leave these running overnight).

``--notify-url URL`` POSTs a JSON summary; ``--on-done CMD`` runs a shell command with the
summary as JSON on stdin and in ``ORCHESTRATE_*`` environment variables. A failing hook is
logged, never fatal: the images are already safe.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.request
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)
TIMEOUT_S = 30


@dataclass(frozen=True)
class Hooks:
    notify_url: str | None = None
    on_done: str | None = None

    def __bool__(self) -> bool:
        return bool(self.notify_url or self.on_done)

    def batch_done(self, summary: dict[str, Any]) -> None:
        body = json.dumps(summary, sort_keys=True).encode()
        if self.notify_url:
            try:
                req = urllib.request.Request(
                    self.notify_url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                    resp.read()
            except Exception as exc:
                logger.warning("--notify-url %s failed: %s", self.notify_url, exc)
        if self.on_done:
            env = {
                **os.environ,
                "ORCHESTRATE_BATCH_ID": str(summary.get("batch_id", "")),
                "ORCHESTRATE_SUCCEEDED": str(summary["counts"].get("succeeded", 0)),
                "ORCHESTRATE_FAILED": str(summary["counts"].get("failed", 0)),
                "ORCHESTRATE_TOTAL": str(sum(summary["counts"].values())),
            }
            try:
                proc = subprocess.run(
                    self.on_done, shell=True, input=body, env=env, timeout=TIMEOUT_S, check=False
                )
                if proc.returncode:
                    logger.warning("--on-done exited %d", proc.returncode)
            except Exception as exc:
                logger.warning("--on-done failed: %s", exc)


def batch_summary(store: Any, batch_id: int) -> dict[str, Any]:
    counts = store.counts(batch_id)
    name = next((b["name"] for b in store.batches() if b["id"] == batch_id), "")
    return {"event": "batch_done", "batch_id": batch_id, "name": name, "counts": counts}
