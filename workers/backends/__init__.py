"""Pipeline backends: one module each, the same ``load`` arguments and ``generate`` entry point.

A backend takes the job's ``contract.job.GenerationRequest`` and raises the job errors of
``contract.errors``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from contract.job import BATCH_FIELDS, GenerationRequest

__all__ = ["Backend", "GenerationResult", "batch_key"]


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
    # Text encoders that saw only the start of the prompt: name -> [tokens, tokens kept].
    truncated: dict[str, list[int]] = field(default_factory=dict)


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
