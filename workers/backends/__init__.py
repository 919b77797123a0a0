"""Pipeline backends: one module each, the same ``load`` arguments and ``generate`` entry point."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# The job errors belong to the project's one hierarchy; re-exported here for the backends.
from contract.errors import (
    JobError,
    JobInputError,
    JobInterrupted,
    ModelLoadError,
    ModelNotFound,
)

BACKENDS = ("diffusers", "coreml")

__all__ = [
    "BACKENDS",
    "BATCH_FIELDS",
    "Backend",
    "GenerationRequest",
    "GenerationResult",
    "JobError",
    "JobInputError",
    "JobInterrupted",
    "ModelLoadError",
    "ModelNotFound",
    "batch_key",
]


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


@dataclass
class GenerationResult:
    image: Any  # PIL.Image.Image
    text_encode_s: float
    denoise_s: float
    decode_s: float
    unet_evaluations: int
    step_times: list[float] = field(default_factory=list)
    # Images made in the same pipeline call; above 1 the times above are the batch's shared out.
    batch_size: int = 1


# What must be equal for requests to share one pipeline call (prompts, negative prompts and
# seeds may differ).
BATCH_FIELDS = ("steps", "guidance_scale", "width", "height", "scheduler")


def batch_key(request: GenerationRequest) -> tuple[Any, ...]:
    return tuple(getattr(request, f) for f in BATCH_FIELDS)


class Backend(Protocol):
    name: str
    model: str
    device: str
    dtype: str
    threads: int

    def generate(self, request: GenerationRequest, should_stop: Any = None) -> GenerationResult: ...

    def generate_batch(
        self, requests: Sequence[GenerationRequest], should_stop: Any = None
    ) -> list[GenerationResult]: ...

    def versions(self) -> dict[str, str]: ...
