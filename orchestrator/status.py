"""The numbers users ask for: counts by status, progress per batch, stage timings."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.models import JobStatus
from orchestrator.store import JobStore

WORKERS_SEEN_WITHIN = 24 * 3600.0
STAGE_LABELS = (
    ("queue_wait_s", "queue wait"),
    ("load_s", "load"),
    ("text_encode_s", "text encode"),
    ("denoise_s", "denoise"),
    ("decode_s", "decode"),
    ("encode_s", "PNG encode"),
    ("total_s", "total"),
)


def overview(store: JobStore, batch_id: int | None = None) -> dict[str, Any]:
    """Counts by status, per-batch progress and mean stage timings (the ``--json`` shape)."""
    counts = store.counts(batch_id)
    batches = store.batches()
    if batch_id is not None:
        batches = [b for b in batches if b["id"] == batch_id]
    return {
        "batch": batch_id,
        "counts": counts,
        "total": sum(counts.values()),
        "timings": store.stage_timings(batch_id),
        "workers": store.workers(seen_within=WORKERS_SEEN_WITHIN),
        "batches": [
            {
                "id": b["id"],
                "name": b["name"],
                "created_at": b["created_at"],
                "jobs": sum(b["counts"].values()),
                "counts": b["counts"],
            }
            for b in batches
        ],
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def render_text(data: dict[str, Any]) -> str:
    scope = f"batch {data['batch']}" if data["batch"] is not None else "all batches"
    lines = [f"Jobs ({scope}):"]
    for status in JobStatus:
        lines.append(f"  {status.value:<10} {data['counts'][status.value]:>8}")
    lines.append(f"  {'total':<10} {data['total']:>8}")
    t = data["timings"]
    if t.get("n"):
        parts = [f"{label} {_seconds(t[key])}" for key, label in STAGE_LABELS]
        if t.get("peak_mem_mb") is not None:
            parts.append(f"peak memory {t['peak_mem_mb']:.0f} MB")
        lines.append(f"Mean timings over the last {t['n']} succeeded attempts:")
        lines.append("  " + ", ".join(parts))
    if data["batches"]:
        lines.append("Batches:")
        lines.append(f"  {'id':>4}  {'name':<24} {'succeeded':>15}  {'failed':>6}  {'running':>7}")
        for b in data["batches"]:
            c = b["counts"]
            done = f"{c['succeeded']}/{b['jobs']}"
            lines.append(
                f"  {b['id']:>4}  {b['name'][:24]:<24} {done:>15}  {c['failed']:>6}  {c['running']:>7}"
            )
    if data.get("workers"):
        now = time.time()
        lines.append("Workers (seen in the last 24 h):")
        lines.append(
            f"  {'name':<28} {'host':<14} {'backend':<16} {'model':<14} {'state':<7} "
            f"{'jobs':>5} {'s/image':>8}  last seen"
        )
        for w in data["workers"]:
            backend = " ".join(x for x in (w["transport"], w["backend"], w["device"]) if x)
            spi = f"{w['s_per_image']:.2f}" if w["s_per_image"] is not None else "-"
            lines.append(
                f"  {w['name'][:28]:<28} {w['host'][:14]:<14} {backend[:16]:<16} "
                f"{(w['model'] or '-')[:14]:<14} {w['state']:<7} {w['jobs_done']:>5} {spi:>8}  "
                f"{_ago(now - w['last_seen'])}"
            )
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"
