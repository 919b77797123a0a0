"""Stand-ins for the quality gate's tests: a backend whose image shows its seed, judge commands
(small Python scripts) that score by that seed, and an RQ worker built from them."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from contract.job import GenerationRequest
from workers.backends import GenerationResult
from workers.quality import CommandJudge, Judge
from workers.task import PipelineCache


def seed_pixels(seed: int) -> Image.Image:
    """An 8x8 image whose first two pixels spell ``seed`` (32 bits)."""
    image = Image.new("RGB", (8, 8), (0, 0, 0))
    image.putpixel((0, 0), (seed & 255, (seed >> 8) & 255, (seed >> 16) & 255))
    image.putpixel((1, 0), ((seed >> 24) & 255, 0, 0))
    return image


def seed_of(image: Image.Image) -> int:
    rgb = image.convert("RGB")
    r, g, b = rgb.getpixel((0, 0))  # type: ignore[misc]
    high = rgb.getpixel((1, 0))[0]  # type: ignore[index]
    return int(r | g << 8 | b << 16 | high << 24)


class SeedBackend:
    """A pipeline whose image is its request's seed, spelled in pixels; it records every
    seed it was asked for. ``render_scene``: draw the prompt's scene (for the built-in judge)."""

    name = "fake"
    device = "cpu"
    dtype = "fp32"
    threads = 1

    def __init__(self, model: str = "tiny", *, render_scene: bool = False) -> None:
        self.model = model
        self.quantization = "fp16"
        self.render_scene = render_scene
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def generate(self, request: GenerationRequest, should_stop: Any = None) -> GenerationResult:
        with self._lock:
            self.calls.append(request.seed)
        if self.render_scene:
            import numpy as np

            from workers.tiny.scenes import parse_prompt, render

            scene = parse_prompt(request.prompt)
            assert scene is not None
            image = render(scene, np.random.default_rng(request.seed), 64, 64)
        else:
            image = seed_pixels(request.seed)
        return GenerationResult(
            image=image, text_encode_s=0.001, denoise_s=0.002, decode_s=0.001, unet_evaluations=2
        )

    def versions(self) -> dict[str, str]:
        return {"fake": "1"}


def cache_with(backend: SeedBackend, judge: Judge | None = None) -> PipelineCache:
    """A pipeline cache that already holds ``backend`` (so nothing is loaded)."""
    cache = PipelineCache(judge=judge)
    cache.current = backend
    return cache


# The scripts read the seed back from the image they are given and log it, one a line.
_JUDGE = """\
import sys
from PIL import Image
path, prompt = sys.argv[1], sys.argv[2]
with Image.open(path) as im:
    rgb = im.convert("RGB")
    r, g, b = rgb.getpixel((0, 0))
    seed = r | g << 8 | b << 16 | rgb.getpixel((1, 0))[0] << 24
with open({log!r}, "a") as fh:
    fh.write(f"{{seed}} {{prompt}}\\n")
{body}
"""

ODD_SEEDS_PASS = 'print("judging...")\nprint(0.9 if seed % 2 else 0.3)'
ALWAYS_LOW = "print(0.2)"


def judge_command(folder: Path, body: str, name: str = "judge.py") -> str:
    """A judge command (``python script``) whose script runs ``body`` with ``seed``, ``path``
    and ``prompt`` defined; it logs each seed it scores to ``<folder>/<name>.log``."""
    script = folder / name
    log = folder / f"{name}.log"
    script.write_text(_JUDGE.format(log=str(log), body=body), encoding="utf-8")
    return f"{sys.executable} {script}"


def judged_seeds(folder: Path, name: str = "judge.py") -> list[int]:
    log = folder / f"{name}.log"
    if not log.exists():
        return []
    return [int(line.split(" ", 1)[0]) for line in log.read_text().splitlines()]


def gated_rq_worker(url: str, judge_cmd: str) -> None:
    """An RQ worker (own process) that runs the real task on a SeedBackend with a command
    judge; it exits after two idle seconds."""
    from workers.rq.worker import run_worker

    cache = cache_with(SeedBackend(), CommandJudge(judge_cmd))
    run_worker(url, cache=cache, burst=True, burst_idle=2, name="gated")
