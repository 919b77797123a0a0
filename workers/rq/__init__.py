"""The data-plane half of the Redis/RQ transport: the worker that runs on every Mac (``worker``),
its heartbeats and micro-batches; what it shares with the coordinator is ``contract.protocol``.
Never opens the database."""
