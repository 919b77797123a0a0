"""The diffusers/PyTorch backend: Stable Diffusion on CPU, CUDA or Apple's MPS.

Noise comes from a CPU ``torch.Generator`` seeded per job, and torch runs with a fixed thread
count, so the same job gives the same pixels in any process on the same kind of machine.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.backends import (
    GenerationRequest,
    GenerationResult,
    JobInputError,
    JobInterrupted,
    ModelLoadError,
)
from workers.checkpoints import is_checkpoint_file
from workers.models import (
    checkpoint_file,
    expand_path,
    is_tiny,
    local_folder,
    looks_like_path,
)
from workers.schedulers import build_scheduler
from workers.tiny import ensure_tiny_model

logger = logging.getLogger(__name__)

# Library chatter (progress bars, optional-dependency notices) would bury the worker's own log.
for _var, _value in (
    ("TRANSFORMERS_VERBOSITY", "error"),
    ("DIFFUSERS_VERBOSITY", "error"),
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    # OpenMP threads that wait by spinning (libgomp's default) take the cores from each other
    # and from every other process: on a busy machine a 2-thread 64 px image took 28 s instead
    # of 1 s (issue 12, benchmarks/threads.py). Passive waits do not fall off that cliff and do
    # not change the pixels. libgomp reads this once, when torch is first imported, which in
    # every command happens below, after this line (tests/integration/test_threads.py); a value
    # the user set is kept.
    ("OMP_WAIT_POLICY", "PASSIVE"),
):
    os.environ.setdefault(_var, _value)

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' was asked for but torch sees no CUDA GPU")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("device 'mps' was asked for but torch sees no Apple GPU (MPS)")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def model_source(model: str) -> str:
    """Where ``from_pretrained`` finds a manifest's model: the built-in tiny model's cache
    folder, a local diffusers folder, a single-file checkpoint, or a hub id."""
    if is_tiny(model):
        return str(ensure_tiny_model())
    folder = local_folder(model)
    if folder is not None:
        return str(folder)
    checkpoint = checkpoint_file(model)
    if checkpoint is not None:
        return str(checkpoint)
    if is_checkpoint_file(model):
        raise JobInputError(f"model {model!r}: no such single-file checkpoint on this machine")
    if looks_like_path(model) or expand_path(model).exists():
        # Retrying cannot help: the job fails at once (JobInputError), not three times.
        raise JobInputError(
            f"model {model!r} is not a diffusers folder (no model_index.json there)"
        )
    return model  # a hub id: from_pretrained finds it in the local HF cache or downloads it


# What huggingface_hub and diffusers say when a file is neither cached nor downloadable.
_UNREACHABLE = (
    "cached",
    "local_files_only",
    "offline",
    "internet connection",
    "snapshot folder",
    "name or service not known",
    "connecterror",
)


def _hub_unreachable(text: str) -> bool:
    return any(marker in text.lower() for marker in _UNREACHABLE)


def load_pipeline(source: str, dtype: Any) -> Any:
    """A ``StableDiffusionPipeline`` from a folder or hub id, quietly, without a safety checker."""
    import diffusers
    import transformers
    from diffusers import StableDiffusionPipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if is_checkpoint_file(source) and Path(source).is_file():
        return _load_checkpoint(Path(source), dtype)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as exc:
        if not Path(source).exists() and _hub_unreachable(str(exc)):
            # diffusers' advice (pass local_files_only=False, see a stack trace we do not
            # show) means nothing to a user of this tool; say what to do instead.
            raise ModelLoadError(
                f"model {source!r} is not in this machine's Hugging Face cache, and the hub "
                "cannot be reached (offline, or HF_HUB_OFFLINE=1): download it where there "
                f"is a network (`hf download {source}`) or give a local diffusers folder"
            ) from exc
        raise ModelLoadError(
            f"cannot load a Stable Diffusion pipeline from {source}: {exc}"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_checkpoint(path: Path, dtype: Any) -> Any:
    from workers.checkpoints import load_checkpoint

    try:
        pipe = load_checkpoint(path, dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if _hub_unreachable(str(exc)):
            raise ModelLoadError(
                f"single-file checkpoint {path}: diffusers needs the configuration of its model "
                "family, which is not in this machine's Hugging Face cache (for Stable Diffusion "
                "1.x: `hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include "
                "'*.json' '*.txt'` where there is a network), or use a diffusers folder"
            ) from exc
        raise ModelLoadError(f"cannot load single-file checkpoint {path}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DiffusersBackend:
    """A loaded ``StableDiffusionPipeline``, kept for every job that names its model."""

    name = "diffusers"

    def __init__(
        self,
        model: str,
        *,
        source: str | None = None,
        quantization: str = "fp16",
        device: str = "auto",
        threads: int = 2,
    ) -> None:
        import torch

        self.model = model
        self.quantization = quantization
        self.threads = threads
        # The thread count changes how reductions are split, and so the pixels: fix it (and
        # record it: reproduce uses the recorded count, never the current default).
        torch.set_num_threads(threads)
        self.device = pick_device(device)
        # CPU fp16 is slow and partly unsupported; the unquantized weights run in fp32 there.
        self._torch_dtype = torch.float32 if self.device == "cpu" else torch.float16
        self.dtype = "fp32" if self._torch_dtype == torch.float32 else "fp16"
        # A compressed variant is a model folder of its own, found by the pipeline cache.
        pipe = load_pipeline(source or model_source(model), self._torch_dtype)
        self.pipe = pipe.to(self.device)
        self._scheduler_config = dict(pipe.scheduler.config)

    @functools.cached_property
    def _versions(self) -> dict[str, str]:
        import diffusers
        import torch
        import transformers

        return {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "platform": platform.platform(),
        }

    def versions(self) -> dict[str, str]:
        return dict(self._versions)

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> GenerationResult:
        import torch

        pipe = self.pipe
        do_cfg = request.guidance_scale > 1.0
        # 1. A fresh scheduler of the job's kind (schedulers keep per-run state).
        pipe.scheduler = build_scheduler(request.scheduler, self._scheduler_config)

        with torch.inference_mode():
            # 2. Text encoding
            t0 = time.perf_counter()
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                request.prompt,
                self.device,
                1,
                do_cfg,
                request.negative_prompt or None,
            )
            self._sync()
            t1 = time.perf_counter()

            # 3. Denoising, with the pipeline's own loop; the callback times each step and
            # lets a shutdown or cancel stop between steps.
            step_ends: list[float] = []

            def on_step_end(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                self._sync()
                step_ends.append(time.perf_counter())
                if should_stop is not None and should_stop():
                    raise JobInterrupted(f"stopped after step {len(step_ends)}")
                return kwargs

            latents = pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                height=request.height,
                width=request.width,
                generator=torch.Generator("cpu").manual_seed(request.seed),
                output_type="latent",
                callback_on_step_end=on_step_end,
            ).images
            t2 = time.perf_counter()

            # 4. VAE decode
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[
                0
            ]
            image = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
            t3 = time.perf_counter()

        starts = [t1, *step_ends[:-1]]
        return GenerationResult(
            image=image,
            text_encode_s=t1 - t0,
            denoise_s=t2 - t1,
            decode_s=t3 - t2,
            unet_evaluations=len(step_ends) * (2 if do_cfg else 1),
            step_times=[round(e - s, 6) for s, e in zip(starts, step_ends, strict=True)],
        )

    def _sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        elif self.device == "mps":
            torch.mps.synchronize()
