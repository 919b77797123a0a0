"""The data plane: load a pipeline once, take JSON jobs, return JSON results and image bytes.

The runtime is at the top: ``task`` (the one task both transports run), ``backends/``,
``rq/`` (the RQ worker), ``batching``, ``tuning``, ``metadata``, ``quality``, ``memory`` and
``cache``. Beside it: ``models/`` (where a model comes from and what it is), ``tiny/`` (the
built-in models' world: the tiny models, their scenes, training and judge) and
``compression/`` (mixed-bit palettization and Core ML conversion, built on the backends).
Below everything is ``contract``; nothing here imports ``orchestrator``.
"""

import os

# OpenMP threads that wait by spinning (libgomp's default) take the cores from each other and
# from every other process: on a busy machine a 2-thread 64 px image took 28 s instead of 1 s
# (issue 12, benchmarks/threads.py), and two test processes spinning against each other made
# the suite take twice its time. Passive waits do not fall off that cliff and do not change the
# pixels. libgomp reads this once, when torch is first imported, which in every command, script
# and benchmark happens after an import of this package (tests/integration/test_threads.py;
# tests/conftest.py imports it first); a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
