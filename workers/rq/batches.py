"""Micro-batches on the RQ side: a worker that took one job takes compatible ones with it.

The coordinator puts each job in its model's queue as its own RQ job (own dispatch id, lease
token and heartbeat), and keeps enough of them in flight for every worker's batch size. A
worker that has dequeued one job looks at the next few ids of the same queue, vets each
candidate's payload exactly as it vets a dequeued job, and takes those with the same
``workers.task.batch_key``: each in one atomic Redis step that removes it from the queue and
starts its heartbeat, so the coordinator never sees it neither waiting nor alive. A job
another worker took first is simply skipped; one that fails vetting is left in its queue for
the normal path to refuse. From there each job is a job of its own: started, heartbeating,
delivered and bookkept one by one.
"""

from __future__ import annotations

import logging
from typing import Any

from rq import Queue
from rq.job import Job

from contract import protocol as proto
from workers.rq.vetting import vet
from workers.task import batch_key

logger = logging.getLogger(__name__)

LOOK_AHEAD = 4  # ids scanned per place in the batch: compatible jobs need not be adjacent

# Take one job out of its queue and start its heartbeat, or do nothing if it is not there any
# more (another worker took it, or the coordinator withdrew it).
_TAKE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
"""


def take_companions(
    worker: Any, queue: Queue, first: dict[str, Any], limit: int
) -> list[tuple[Job, dict[str, Any]]]:
    """Up to ``limit`` jobs from ``queue`` that can share ``first``'s pipeline call, each
    taken out of the queue with its heartbeat started, with their vetted payloads."""
    key = batch_key(first)
    if limit <= 0 or key is None:
        return []
    conn = worker.connection
    raw_ids = conn.lrange(queue.key, 0, limit * LOOK_AHEAD - 1)
    take = conn.register_script(_TAKE)
    found: list[tuple[Job, dict[str, Any]]] = []
    for raw in raw_ids:
        if len(found) >= limit:
            break
        rq_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        if not proto.is_dispatch_id(rq_id):
            continue  # not ours: the normal path refuses it
        try:
            job = Job.fetch(rq_id, connection=conn, serializer=worker.serializer)
            payload = vet(job, worker.secret)
        except Exception as exc:  # gone, or not a job this worker runs: left where it is
            logger.debug("job %s not taken into a batch: %s", rq_id, exc)
            continue
        if batch_key(payload) != key:
            continue
        heartbeat = proto.heartbeat_key(rq_id)
        if take(keys=[queue.key, heartbeat], args=[rq_id, worker.name, worker.heartbeat_ttl]):
            found.append((job, payload))
    return found
