"""A job as both planes see it: the request that decides its pixels, the fields a manifest row,
a job row and a worker's payload share, and the result a worker returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from contract.errors import QualityGateFailed


@dataclass(frozen=True)
class GenerationRequest:
    """What decides an image's pixels; the same fields for every backend."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    scheduler: str


# The job's fields, spelled once. What decides an image's pixels is the worker's request; a
# manifest row adds the model variant; a worker's payload adds where the job belongs. The
# manifest's columns, the fingerprint, the payload, the insert and the export derive from
# these (and the store's Job model has a column for each: a test checks it).
PIXEL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GenerationRequest))
JOB_FIELDS: tuple[str, ...] = (*PIXEL_FIELDS, "model", "quantization")
# The job's quality gate (``workers.quality``): the least score its image must reach, and how
# many seeds one attempt may try for it. Both None when the job has none; then they are left
# out of the fingerprint, the payload and the PNG, so an ungated job is exactly as before.
GATE_FIELDS: tuple[str, ...] = ("min_score", "quality_tries")
PAYLOAD_FIELDS: tuple[str, ...] = (
    "id",
    "batch_id",
    *JOB_FIELDS,
    *GATE_FIELDS,
    "output_dir",
    "output_name",
    "line",
    "image_index",
    "tags",
    "extra_json",  # the manifest's own metadata columns; a worker gets them as ``extra``
)
# What must be equal for requests to share one pipeline call (prompts, negative prompts and
# seeds may differ).
BATCH_FIELDS: tuple[str, ...] = ("steps", "guidance_scale", "width", "height", "scheduler")

# What a job's result reports, by type: the run (text), counts, and seconds (peak MB last).
RESULT_TEXT: tuple[str, ...] = ("backend", "device", "dtype", "tuning")
RESULT_COUNTS: tuple[str, ...] = (
    "torch_threads",
    "unet_evaluations",
    "width",
    "height",
    "batch_size",
)
RESULT_TIMINGS: tuple[str, ...] = (
    "load_s",
    "text_encode_s",
    "denoise_s",
    "decode_s",
    "encode_s",
    "total_s",
    "peak_mem_mb",
)
# What a gated job's result reports besides: the kept image's score, the seed that made it and
# the judge that scored it.
QUALITY_RESULT_FIELDS: tuple[str, ...] = ("score", "image_seed", "judge")
# How a failed gate's error begins as the transports record it ("<error class>: <message>").
GATE_ERROR_PREFIX = f"{QualityGateFailed.__name__}: "
