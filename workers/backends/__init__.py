"""Pipeline backends: one module each, the same ``load`` arguments and ``generate`` entry point."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# The job errors belong to the project's one hierarchy; re-exported here for the backends.
from orchestrator.errors import JobError, JobInputError, JobInterrupted, ModelLoadError

BACKENDS = ("diffusers", "coreml")

__all__ = [
    "BACKENDS",
    "Backend",
    "GenerationRequest",
    "GenerationResult",
    "JobError",
    "JobInputError",
    "JobInterrupted",
    "ModelLoadError",
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


class Backend(Protocol):
    name: str
    model: str
    device: str
    dtype: str
    threads: int

    def generate(self, request: GenerationRequest, should_stop: Any = None) -> GenerationResult: ...

    def versions(self) -> dict[str, str]: ...
