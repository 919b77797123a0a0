"""What an RQ job must be for this worker to run it: the project's one task
(``contract.protocol.TASK``) with one payload exactly as the coordinator makes it (signed,
where a secret is set), and nothing besides: no callbacks, webhooks, dependencies or repeats.
Both the work loop and a batch's companions are vetted here."""

from __future__ import annotations

from typing import Any

from rq.exceptions import DeserializationError
from rq.job import Job

from contract import protocol as proto


def vet(job: Job, secret: bytes | None) -> dict[str, Any]:
    """The payload of a job this worker may run, or BadMessage saying why not. Nothing of
    the job is imported or called to find out: names and JSON are read, never resolved."""
    try:
        func_name = job.func_name  # JSON only: a pickled job never gets unpickled here
        args, kwargs = job.args, job.kwargs
    except DeserializationError:
        raise proto.BadMessage("not JSON (pickle or garbage)") from None
    if func_name != proto.TASK:
        raise proto.BadMessage(f"this worker runs only {proto.TASK}, not {func_name!r}")
    extras = [
        name
        for name, present in (
            ("on_success", job._success_callback_name),
            ("on_failure", job._failure_callback_name),
            ("on_stopped", job._stopped_callback_name),
            ("webhooks", job.webhooks),
            ("depends_on", job._dependency_ids),
            ("repeat", job.repeats_left),
            ("retry", job.retries_left),
        )
        if present
    ]
    if extras:
        raise proto.BadMessage(f"jobs here carry no {', '.join(extras)}")
    if kwargs or len(args) != 1:
        raise proto.BadMessage("the task takes exactly one payload argument")
    return proto.check_payload(args[0], secret)
