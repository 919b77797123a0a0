"""The two transports that carry a job from the SQLite queue to the task and its result back.

- ``local``: workers on the queue host claim jobs straight from SQLite under a lease and run
  the task in their own process (``orchestrate run``, ``work --local``).
- ``coordinator``: the control-plane half of the Redis/RQ transport; it moves jobs from SQLite
  into RQ queues a bounded window at a time and records what RQ workers send back. The
  data-plane half, the RQ worker that runs on every Mac, is ``workers.rq``.

Both record results through ``orchestrator.results``, the one fenced path from a finished
image to its published file.
"""
