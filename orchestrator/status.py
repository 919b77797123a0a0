"""The numbers users ask for, one shape for ``orchestrate status``, the dashboard and its API.

:func:`overview` gathers them (every key is documented on the ``status`` command);
:func:`render_text` prints them plainly for pipes and logs, :func:`render_rich` as tables
for a terminal.
"""

from __future__ import annotations

import time
from typing import Any

from contract.status import ACTIVE_STATUSES, FINAL_STATUSES, VISIBLE_STATUSES, JobStatus
from orchestrator.store import ReadModel
from orchestrator.store.reports import THROUGHPUT_WINDOW_S
from workers.quality import fmt_score

WORKERS_SEEN_WITHIN = 24 * 3600.0
# A worker not heard from for STALE_BEATS of its heartbeats is shown stale (the coordinator
# gives an RQ worker's job to another after three missed), and gone after GONE_BEATS of them,
# and at least GONE_AFTER_S.
STALE_BEATS = 3
GONE_BEATS = 12
GONE_AFTER_S = 60.0
DEFAULT_HEARTBEAT_S = 5.0  # for rows of workers that did not say theirs
STAGE_LABELS = (
    ("queue_wait_s", "queue wait"),
    ("load_s", "load"),
    ("text_encode_s", "text encode"),
    ("denoise_s", "denoise"),
    ("decode_s", "decode"),
    ("encode_s", "PNG encode"),
    ("total_s", "total"),
)
STAGE_ROWS = (*STAGE_LABELS[:4], ("denoise_per_step_s", "denoise / step"), *STAGE_LABELS[4:])
PERCENTILE_LABELS = (
    ("text_encode_s", "text encode"),
    ("denoise_per_step_s", "denoise / step"),
    ("decode_s", "decode"),
    ("total_s", "total"),
)


def progress(counts: dict[str, int], images_per_min: float) -> dict[str, Any]:
    """Done, remaining, fraction done and ETA (None while nothing is finishing) of counts."""
    total = sum(counts.values())
    done = sum(counts[s.value] for s in FINAL_STATUSES)
    remaining = sum(counts[s.value] for s in ACTIVE_STATUSES)
    eta = remaining * 60.0 / images_per_min if remaining and images_per_min > 0 else None
    return {
        "done": done,
        "remaining": remaining,
        "fraction": done / total if total else None,
        "eta_s": 0.0 if total and not remaining else eta,
    }


def batch_rows(
    store: ReadModel, rate: dict[str, Any], batch_id: int | None = None
) -> list[dict[str, Any]]:
    """Each batch (or just ``batch_id``) with its counts, progress, rate and ETA; ``rate`` is
    what ``store.measure_throughput`` returned."""
    rows = []
    for b in store.list_batches():
        if batch_id is not None and b["id"] != batch_id:
            continue
        b_rate = rate["by_batch"].get(b["id"], {}).get("images_per_min", 0.0)
        rows.append(
            {
                "id": b["id"],
                "name": b["name"],
                "created_at": b["created_at"],
                "paused_at": b.get("paused_at"),
                "jobs": sum(b["counts"].values()),
                "counts": b["counts"],
                "images_per_min": b_rate,
                **progress(b["counts"], b_rate),
            }
        )
    return rows


def overview(
    store: ReadModel,
    batch_id: int | None = None,
    *,
    window_s: float = THROUGHPUT_WINDOW_S,
    seen_within: float | None = WORKERS_SEEN_WITHIN,
) -> dict[str, Any]:
    """Everything ``status --json`` prints and the dashboard shows, for one batch or all."""
    now = time.time()
    counts = store.count_jobs(batch_id)
    rate = store.measure_throughput(window_s, now=now)
    per_min = (
        rate["images_per_min"]
        if batch_id is None
        else rate["by_batch"].get(batch_id, {}).get("images_per_min", 0.0)
    )
    stages = store.read_stage_percentiles(batch_id)
    return {
        "generated_at": now,
        "batch": batch_id,
        "counts": counts,
        "total": sum(counts.values()),
        "progress": progress(counts, per_min),
        "throughput": {
            "window_s": window_s,
            "images": rate["images"]
            if batch_id is None
            else rate["by_batch"].get(batch_id, {}).get("images", 0),
            "images_per_min": per_min,
            "failed_attempts": rate["failed_attempts"],
        },
        "timings": store.read_stage_timings(batch_id),
        "stages": stages["stages"],
        "stages_n": stages["n"],
        "workers": workers(store, now, seen_within=seen_within),
        "batches": batch_rows(store, rate, batch_id),
        "failures": store.group_failures(batch_id),
        "slowest": store.list_slowest_jobs(batch_id),
        "coordinator": coordinator_view(store.read_coordinator(), now),
        "dead_letters": store.read_dead_letters(limit=5),
        "loading": store.list_loading_batches(),
        "paused": store.read_pauses(),
        "quality": store.summarize_quality(batch_id),
        "unpublished": store.summarize_unpublished(batch_id),
    }


def coordinator_live(row: dict[str, Any] | None, now: float) -> bool:
    """Whether a coordinator holds its lease now (and so relays RQ workers' heartbeats)."""
    return row is not None and row["state"] != "stopped" and row["expires_at"] > now


def presence(w: dict[str, Any], now: float, *, relayed: bool = True) -> str:
    """What a worker is, as far as its row tells: the state it reported while it has been
    heard from within its heartbeat window (a local worker renewing its job's lease is heard
    from); ``stale`` when silent for longer; ``gone`` when silent much longer, or ``stopped``
    (it exited cleanly). ``relayed``: False for an RQ worker while no coordinator runs to copy
    its heartbeats here: silence then says nothing of the worker, so it is at most stale."""
    state = w.get("reported_state", w["state"])
    if state == "stopped":
        return "gone"
    expires = w.get("lease_expires_at")
    if expires is not None and expires > now:
        return str(state)
    beat = w.get("heartbeat_s") or DEFAULT_HEARTBEAT_S
    silent = now - w["last_seen"]
    if relayed and silent > max(GONE_AFTER_S, GONE_BEATS * beat):
        return "gone"
    if silent > STALE_BEATS * beat:
        return "stale"
    return str(state)


def workers(
    store: ReadModel, now: float | None = None, *, seen_within: float | None = WORKERS_SEEN_WITHIN
) -> list[dict[str, Any]]:
    """The workers as status and the dashboard show them: each row of ``store.read_worker_stats``
    with ``state`` as :func:`presence` tells it (``reported_state``: what the worker said),
    ``relayed`` (False: an RQ worker while no coordinator runs) and ``liveness`` (the phrase)."""
    now = time.time() if now is None else now
    live = coordinator_live(store.read_coordinator(), now)
    out = []
    for w in store.read_worker_stats(seen_within=seen_within):
        w = {**w, "reported_state": w["state"], "relayed": live or w["transport"] != "rq"}
        w["state"] = presence(w, now, relayed=w["relayed"])
        w["liveness"] = liveness(w, now)
        out.append(w)
    return out


def quality_lines(data: dict[str, Any]) -> list[str]:
    """One line per batch with a quality gate: judged, passed, failed the gate, mean score."""
    out = []
    for q in data.get("quality") or []:
        gate = fmt_score(q["min_score_low"])
        if q["min_score_high"] != q["min_score_low"]:
            gate += f"-{fmt_score(q['min_score_high'])}"
        mean = "-" if q["mean_score"] is None else fmt_score(q["mean_score"])
        out.append(
            f"Quality gate, batch {q['batch_id']} (min score {gate}): {q['judged']}/{q['gated']} "
            f"judged, {q['passed']} passed, {q['failed_gate']} failed the gate, "
            f"mean score {mean}"
        )
    return out


def coordinator_view(row: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
    """The coordinator lease as people read it: who, since when, and whether it is alive."""
    if row is None:
        return None
    live = coordinator_live(row, now)
    return {
        "host": row["host"],
        "pid": row["pid"],
        "since": row["since"],
        "renewed_at": row["renewed_at"],
        "state": row["state"] if live else ("stopped" if row["state"] == "stopped" else "gone"),
        "message": row["message"],
    }


def health_lines(data: dict[str, Any]) -> list[str]:
    """What needs a look: a paused coordinator or worker (why), a paused queue or batch, dead
    letters, loading batches."""
    now = data["generated_at"]
    out = []
    c = data.get("coordinator")
    if c is not None and c["state"] != "stopped":
        line = f"Coordinator: pid {c['pid']} on {c['host']}, {c['state']}, since {ago(c['since'], now)}"
        if c["state"] == "gone":
            line += f" (last renewed {ago(c['renewed_at'], now)}: it died or hangs)"
        if c["message"]:
            line += f": {c['message']}"
        out.append(line)
    paused = data.get("paused") or {}
    if paused.get("queue_paused_at") is not None:
        out.append(
            f"Queue paused {ago(paused['queue_paused_at'], now)}: no new job starts, "
            f"{paused['waiting']} waiting (`orchestrate resume`)"
        )
    for b in paused.get("batches") or []:
        out.append(
            f"Batch {b['id']} ({b['name']}) paused {ago(b['paused_at'], now)}: "
            f"{b['pending']} jobs waiting (`orchestrate resume --batch {b['id']}`)"
        )
    for w in data["workers"]:
        if w["state"] == "paused":
            out.append(f"Worker {w['name']} paused: {w.get('message') or '?'}")
    if any(not w.get("relayed", True) and w["state"] != "gone" for w in data["workers"]):
        out.append(
            "No coordinator is running: RQ workers are heard through it, so their rows are as "
            "it last saw them (`orchestrate coordinator`)"
        )
    dead = data.get("dead_letters") or {}
    if dead.get("count"):
        last = dead["recent"][0] if dead.get("recent") else None
        text = f"Dead letters: {dead['count']} messages refused"
        if last:
            text += f" (last {ago(last['at'], now)}: {last['reason'][:80]})"
        out.append(text)
    for b in data.get("loading") or []:
        out.append(
            f"Batch {b['id']} ({b['name']}) is still being submitted: "
            f"{b['jobs_so_far']} jobs in so far, {b['state']}"
        )
    out.extend(unpublished_lines(data.get("unpublished"), now))
    return out


def unpublished_lines(u: dict[str, Any] | None, now: float) -> list[str]:
    """Succeeded jobs whose image could not be put in place: how many, and why (the first
    few), with when it is tried again."""
    if not u or not u.get("blocked"):
        return []
    n = u["blocked"]
    what = "1 succeeded job's image waits" if n == 1 else f"{n} succeeded jobs' images wait"
    out = [
        f"Not published: {what} in the staging folder (tried again with backoff, at every "
        "start, and by `orchestrate verify --repair`)"
    ]
    for r in u.get("examples") or []:
        at = r.get("next_try_at")
        when = "due now" if at is None or at <= now else f"next try in {duration(at - now)}"
        out.append(f"  job {r['id']}: {r['error']} ({when})")
    return out


# -- formatting shared by the text, rich and HTML views ------------------------------------------


def seconds(value: float | None) -> str:
    """A duration for people: 35ms, 2.41s."""
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def duration(value: float | None) -> str:
    """A longer duration for people: 45s, 12m, 3h05m, 2d4h."""
    if value is None:
        return "-"
    v = round(value)
    if v < 60:
        return f"{v}s"
    if v < 3600:
        return f"{v // 60}m{v % 60:02d}s"
    if v < 86400:
        return f"{v // 3600}h{v % 3600 // 60:02d}m"
    return f"{v // 86400}d{v % 86400 // 3600}h"


def ago(value: float | None, now: float | None = None) -> str:
    """How long ago a UNIX time was."""
    if value is None:
        return "-"
    s = max(0.0, (time.time() if now is None else now) - value)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    if s < 86400:
        return f"{s / 3600:.1f}h ago"
    return f"{s / 86400:.1f}d ago"


def liveness(w: dict[str, Any], now: float | None = None) -> str:
    """A worker's state and its freshest sign of life, one phrase for the status command and
    the dashboard: ``busy on job 123 for 2m05s, lease renewed (expires in 24s)`` (a local
    worker renews its job's lease while its row may lag), ``busy on job 9 for 40s, heartbeat
    3s ago`` (an RQ worker), ``idle, last seen 5s ago``, ``loading model tiny, last seen 1s
    ago``, ``stale: silent for 25s; was busy on job 9 (still running under it)``, ``gone:
    silent for 3m20s, ...``, ``stopped 2m ago`` (it exited cleanly)."""
    now = time.time() if now is None else now
    seen = ago(w["last_seen"], now)
    state = w["state"]
    reported = w.get("reported_state", state)
    job = w.get("busy_job")
    if reported == "stopped":
        return f"stopped {seen}"
    if state in ("stale", "gone"):
        silent = duration(now - w["last_seen"])
        if w.get("relayed", True):
            text = f"{state}: silent for {silent}"
        else:
            text = f"{state}: not heard from for {silent} (no coordinator is running to relay it)"
        if job:
            if w.get("holds_job"):
                fate = "still running under it"
                expires = w.get("lease_expires_at")
                if expires is not None and expires <= now:
                    fate += f", its lease expired {ago(expires, now)}"
            else:
                fate = (
                    f"that job is {w['job_status']} now"
                    if w.get("job_status")
                    else "that job is gone"
                )
            text += f"; was {reported} on job {job} ({fate})"
        return text
    if state == "loading":
        text = f"loading model {w.get('model') or '?'}" + (f" for job {job}" if job else "")
        return f"{text}, last seen {seen}"
    if not job:
        return f"{state}, last seen {seen}"
    since = w.get("busy_since")
    text = f"busy on job {job}" + (f" for {duration(now - since)}" if since is not None else "")
    if not w.get("holds_job"):
        status = w.get("job_status")
        gone = f"that job is {status} now" if status else "that job is gone"
        return f"{text}, but {gone}; last seen {seen}"
    expires = w.get("lease_expires_at")
    if expires is None:
        return f"{text}, heartbeat {seen}"
    if expires > now:
        return f"{text}, lease renewed (expires in {duration(expires - now)})"
    return f"{text}, lease expired {ago(expires, now)} (not renewing); last seen {seen}"


STATE_STYLES = {"busy": "green", "loading": "cyan", "stale": "yellow", "gone": "dim"}


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f}%"


def backend_of(w: dict[str, Any]) -> str:
    """A worker's transport, backend and device in one word group: ``rq diffusers cpu``."""
    return " ".join(x for x in (w["transport"], w["backend"], w["device"]) if x)


def summary_line(data: dict[str, Any]) -> str:
    p, t = data["progress"], data["throughput"]
    return (
        f"{p['done']}/{data['total']} done ({percent(p['fraction'])}), "
        f"{p['remaining']} to go; {t['images_per_min']:.1f} images/min over the last "
        f"{duration(t['window_s'])}; ETA {duration(p['eta_s'])}"
    )


# -- plain text ------------------------------------------------------------------------------


def render_text(data: dict[str, Any]) -> str:
    """The overview as plain, fixed-width text (for pipes, logs and ``grep``)."""
    scope = f"batch {data['batch']}" if data["batch"] is not None else "all batches"
    lines = [f"Jobs ({scope}):"]
    for status in VISIBLE_STATUSES:
        lines.append(f"  {status.value:<10} {data['counts'][status.value]:>8}")
    lines.append(f"  {'total':<10} {data['total']:>8}")
    lines.append(summary_line(data))
    lines.extend(health_lines(data))
    t = data["timings"]
    if t.get("n"):
        parts = [f"{label} {seconds(t[key])}" for key, label in STAGE_LABELS]
        if t.get("peak_mem_mb") is not None:
            parts.append(f"peak memory {t['peak_mem_mb']:.0f} MB")
        lines.append(f"Mean timings over the last {t['n']} succeeded attempts:")
        lines.append("  " + ", ".join(parts))
        st = data["stages"]
        lines.append(
            "  p50/p95: "
            + ", ".join(
                f"{label} {seconds(st[k]['p50'])}/{seconds(st[k]['p95'])}"
                for k, label in PERCENTILE_LABELS
            )
        )
    if data["batches"]:
        lines.append("Batches:")
        lines.append(
            f"  {'id':>4}  {'name':<24} {'succeeded':>15}  {'failed':>6}  {'running':>7}"
            f"  {'done':>6}  {'img/min':>7}  ETA"
        )
        for b in data["batches"]:
            c = b["counts"]
            done = f"{c[JobStatus.SUCCEEDED]}/{b['jobs']}"
            lines.append(
                f"  {b['id']:>4}  {b['name'][:24]:<24} {done:>15}  {c[JobStatus.FAILED]:>6}  "
                f"{c['running']:>7}  {percent(b['fraction']):>6}  {b['images_per_min']:>7.1f}"
                f"  {duration(b['eta_s'])}" + ("  (paused)" if b.get("paused_at") else "")
            )
    lines.extend(quality_lines(data))
    if data["workers"]:
        now = data["generated_at"]
        lines.append("Workers (seen in the last 24 h):")
        lines.append(
            f"  {'name':<28} {'host':<14} {'backend':<16} {'model':<14} {'state':<7} "
            f"{'jobs':>5} {'failed':>6} {'s/image':>8} {'p95':>8}  liveness"
        )
        for w in data["workers"]:
            mean = w["mean_s"] if w["mean_s"] is not None else w["s_per_image"]
            lines.append(
                f"  {w['name'][:28]:<28} {w['host'][:14]:<14} {backend_of(w)[:16]:<16} "
                f"{(w['model'] or '-')[:14]:<14} {w['state']:<7} {w['jobs_done']:>5} "
                f"{w['jobs_failed']:>6} {seconds(mean):>8} {seconds(w['p95_s']):>8}  "
                f"{liveness(w, now)}"
            )
    if data["failures"]:
        lines.append("Failures (recent failed and lost attempts, by error):")
        for f in data["failures"][:10]:
            ids = ", ".join(map(str, f["job_ids"]))
            lines.append(
                f"  {f['attempts']:>6}x  {f['error'][:70]}  (last {ago(f['last_seen'], data['generated_at'])}; jobs {ids})"
            )
    if data["slowest"]:
        lines.append("Slowest recent jobs:")
        for s in data["slowest"][:5]:
            lines.append(
                f"  job {s['job_id']:>8}  {seconds(s['total_s']):>8}  {s['steps']} steps  "
                f"{s['width']}x{s['height']}  {s['worker']}"
            )
    return "\n".join(lines)


# -- rich, for a terminal --------------------------------------------------------------------


def render_rich(data: dict[str, Any]) -> Any:
    """The overview as rich tables (a renderable for ``Console.print`` or ``Live``)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    now = data["generated_at"]
    scope = f"batch {data['batch']}" if data["batch"] is not None else "all batches"
    parts: list[Any] = [Text(f"Jobs ({scope}): " + summary_line(data), style="bold")]
    parts.extend(Text(line, style="yellow") for line in health_lines(data))

    counts = Table(box=None, pad_edge=False)
    for status in VISIBLE_STATUSES:
        counts.add_column(status.value, justify="right")
    counts.add_column("total", justify="right", style="bold")
    counts.add_row(*(str(data["counts"][s.value]) for s in VISIBLE_STATUSES), str(data["total"]))
    parts.append(counts)

    if data["batches"]:
        t = Table(title="Batches", title_justify="left")
        for col, just in (
            ("id", "right"),
            ("name", "left"),
            ("progress", "left"),
            ("done", "right"),
            ("succeeded", "right"),
            ("failed", "right"),
            ("running", "right"),
            ("img/min", "right"),
            ("ETA", "right"),
        ):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for b in data["batches"]:
            c = b["counts"]
            t.add_row(
                str(b["id"]),
                b["name"] + (" (paused)" if b.get("paused_at") else ""),
                ProgressBar(total=max(b["jobs"], 1), completed=b["done"], width=20),
                percent(b["fraction"]),
                f"{c[JobStatus.SUCCEEDED]}/{b['jobs']}",
                str(c[JobStatus.FAILED]),
                str(c[JobStatus.RUNNING]),
                f"{b['images_per_min']:.1f}",
                duration(b["eta_s"]),
            )
        parts.append(t)
    parts.extend(Text(line) for line in quality_lines(data))

    if data["workers"]:
        t = Table(title="Workers (seen in the last 24 h)", title_justify="left")
        for col in ("name", "host", "backend", "model", "state", "jobs", "failed"):
            t.add_column(col, justify="right" if col in ("jobs", "failed") else "left")
        for col in ("s/image", "p95"):
            t.add_column(col, justify="right")
        t.add_column("liveness")
        for w in data["workers"]:
            mean = w["mean_s"] if w["mean_s"] is not None else w["s_per_image"]
            state_style = STATE_STYLES.get(w["state"], "")
            t.add_row(
                w["name"],
                w["host"],
                backend_of(w),
                w["model"] or "-",
                Text(w["state"], style=state_style),
                str(w["jobs_done"]),
                str(w["jobs_failed"]),
                seconds(mean),
                seconds(w["p95_s"]),
                liveness(w, now),
            )
        parts.append(t)

    if data["stages_n"]:
        t = Table(
            title=f"Stage timings (last {data['stages_n']} succeeded attempts)",
            title_justify="left",
        )
        t.add_column("stage")
        for col in ("mean", "p50", "p95"):
            t.add_column(col, justify="right")
        for key, label in STAGE_ROWS:
            s = data["stages"][key]
            t.add_row(label, seconds(s["mean"]), seconds(s["p50"]), seconds(s["p95"]))
        parts.append(t)

    if data["failures"]:
        t = Table(title="Failures (recent failed and lost attempts)", title_justify="left")
        t.add_column("attempts", justify="right", style="red")
        t.add_column("jobs", justify="right")
        t.add_column("error", overflow="fold")
        t.add_column("last seen", justify="right")
        t.add_column("job ids")
        for f in data["failures"][:10]:
            t.add_row(
                str(f["attempts"]),
                str(f["jobs"]),
                f["error"],
                ago(f["last_seen"], now),
                ", ".join(map(str, f["job_ids"])),
            )
        parts.append(t)
    return Group(*parts)
