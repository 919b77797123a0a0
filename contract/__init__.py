"""The contract both planes import, and nothing else: a job's fields and limits, its statuses, the
result a worker returns, the Redis/RQ protocol between coordinator and workers, the error
hierarchy and the fault points.

The control plane (``orchestrator/``) and the data plane (``workers/``) build on it; it imports
neither, nor torch, diffusers or SQLAlchemy, so that "a worker never opens the database" is a
fact the import graph shows (``tests/unit/test_import_graph.py``).
"""

# The project's version: the package metadata reads it from here (pyproject.toml), the
# command line prints it, and every image names it as the software that made it.
__version__ = "0.1.0"
