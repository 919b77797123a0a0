"""What a job's fields may hold, and the defaults a job runs with, each spelled once: the
manifest validator, the CLI's options (``click.IntRange(*STEPS)``) and the protocol's checks
read them from here."""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

from contract.waiting import Backoff

N = TypeVar("N", int, float)


class Limit(NamedTuple, Generic[N]):
    """The least and the most a number may be, both allowed. (The bounds of a float field are
    whole numbers where they are: ``--help`` shows them as users write them, 0 to 50.)"""

    min: N
    max: N


STEPS = Limit(1, 500)
SIZE = Limit(64, 4096)  # width and height, in pixels (and a multiple of 8)
# torch's CPU generator reads only a seed's low 32 bits: a larger seed would repeat an image.
SEED = Limit(0, 2**32 - 1)
GUIDANCE = Limit(0, 50)  # the CFG scale
NUM_IMAGES = Limit(1, 10_000)  # jobs one manifest row expands to
PRIORITY = Limit(-1_000_000, 1_000_000)
SCORE = Limit(0, 1)  # a judge's score, and a quality gate's least one
QUALITY_TRIES = Limit(1, 20)  # seeds one attempt of a gated job may try
BATCH_SIZE = Limit(1, 16)  # jobs one pipeline call may make (``workers.batching``)
MAX_PROMPT_CHARS = 10_000
MAX_EXTRA = 100  # metadata entries of a job (meta_*, var_*, preset), in a manifest and a payload
MAX_JUDGE_NAME = 255  # characters of a judge's name in a result

# -- choices ---------------------------------------------------------------------------------

BACKENDS = ("diffusers", "coreml")
DEVICES = ("auto", "cpu", "cuda", "mps")  # torch's, for the diffusers backend
COMPUTE_UNITS = ("CPU_AND_NE", "CPU_AND_GPU", "ALL", "CPU_ONLY")  # Core ML's
# fp16 (unquantized), the uniformly palettized variants, by their bits, and the linear
# per-block quantized ones, by (bits, block of input channels): coremltools' per_block
# linear_symmetric int4, the 4-bit preset of Apple's Core AI export. A manifest may also name a
# mixed-bit recipe's variant.
UNIFORM_BITS = {"8bit": 8, "6bit": 6, "4bit": 4}
BLOCK_QUANTIZED = {"int4b32": (4, 32)}
QUANTIZATIONS = ("fp16", *UNIFORM_BITS, *BLOCK_QUANTIZED)

# -- defaults --------------------------------------------------------------------------------

DEFAULT_QUALITY_TRIES = 3
# Before a failed job's next attempt (after attempt n: 2**n s, at most 5 minutes).
JOB_RETRY_BACKOFF = Backoff(1.0, factor=2.0, cap=300.0)
# Fixed, not the core count: torch's thread count changes the pixels, so every machine uses
# the same one unless told otherwise (and records it with each attempt). Kept at 2 (issue 12):
# the cliff on a busy machine came from OpenMP's spinning waits, not from the count, and the
# workers now wait passively (workers/backends/diffusers.py); see benchmarks/threads.py.
DEFAULT_THREADS = 2
# The built-in tiny models' operations are too small for a second thread: with passive waits,
# 2 threads made a 64 px image 5.2x slower than 1 (benchmarks/drift.py; issue 11).
TINY_THREADS = 1
# The count for an image whose metadata records none: the default of the releases that made it.
# Never DEFAULT_THREADS: a new default must not change how old images are regenerated.
UNRECORDED_THREADS = 2
