"""The data-plane half of the Redis/RQ transport: the worker that runs on every Mac (``worker``)
and the contract it shares with the coordinator (``protocol``). Never opens the database."""
