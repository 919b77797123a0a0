"""The Core ML backend (macOS only): a folder from ``orchestrate model convert|compress``, or
Apple's own (its Swift resources, compiled, the UNet whole or in two chunks; or its Python
converter's packages), read by ``workers.backends.coreml_folder``.

Text encoder(s), UNet and VAE decoder run as Core ML models (compiled ``.mlmodelc`` where present,
which load in seconds; otherwise ``.mlpackage``, which Core ML specialises on first load, for
minutes on a real model); the denoising loop is the same diffusers scheduler stepping as the
diffusers backend, with the same CPU noise. On any other system it refuses: Core ML prediction
exists only on macOS, and nothing here pretends otherwise.

What runs on Linux, and is tested there: finding the models, the input layouts, the refusal,
and ``generate()`` itself against a stand-in for ``MLModel`` that evaluates each package's own
spec and weights through torch (tests/coreml_standin.py); Core ML's own kernels are what only
a Mac run confirms.
"""

from __future__ import annotations

import inspect
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import JobInputError, JobInterrupted
from contract.job import GenerationRequest
from contract.limits import COMPUTE_UNITS
from workers.backends import GenerationResult
from workers.backends.coreml_folder import (
    SEQ_LEN,
    SPEC_DTYPES,
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    VAE_DECODER,
    declared_inputs,
    read_folder,
)
from workers.models import model_fingerprint
from workers.models.families import sdxl_time_ids

__all__ = ["SPEC_DTYPES", "CoreMLBackend", "declared_inputs"]

NEEDS_MACOS = (
    "the Core ML backend needs macOS: Core ML prediction (MLModel.predict) only runs on macOS, "
    "not on {system}; use --backend diffusers here"
)


class CoreMLUnavailable(JobInputError):
    """Core ML prediction is not possible on this machine."""


def unet_inputs(
    latents: np.ndarray,
    timestep: float,
    hidden: np.ndarray,
    added: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The UNet's inputs in Apple's layout: a guided batch of two, and the text embeddings as
    (B, C, 1, 77) instead of diffusers' (B, 77, C); SDXL's ``time_ids`` and ``text_embeds``
    (``added``) as they are."""
    sample = np.concatenate([latents, latents]).astype(np.float32)
    return {
        "sample": sample,
        "timestep": np.full((sample.shape[0],), timestep, dtype=np.float32),
        "encoder_hidden_states": np.ascontiguousarray(
            hidden.transpose(0, 2, 1)[:, :, None, :]
        ).astype(np.float32),
        **(added or {}),
    }


def check_platform() -> None:
    if sys.platform != "darwin":
        raise CoreMLUnavailable(NEEDS_MACOS.format(system=platform.system() or sys.platform))


def minimum_os_problem(layout: dict[str, Any], mac_version: str) -> str | None:
    """Why a Mac running ``mac_version`` cannot load a converted folder, or None: a folder
    with grouped-channel palettization is a macOS 15 program (folders from before the layout
    recorded ``minimum_os`` are macOS 13 ones)."""
    needed = str(layout.get("minimum_os", "macOS13"))
    try:
        have = int(mac_version.split(".")[0])
    except ValueError:
        return None  # an unknown version: let Core ML decide
    if have < int(needed.removeprefix("macOS")):
        return (
            f"this Core ML folder needs {needed} (its UNet uses grouped-channel palettization); "
            f"this Mac runs macOS {mac_version}: use a per-tensor variant here"
        )
    return None


class CoreMLBackend:
    name = "coreml"

    def __init__(
        self,
        model: str,
        folder: Path,
        *,
        compute_units: str = "CPU_AND_NE",
        quantization: str = "fp16",
    ) -> None:
        check_platform()
        import coremltools as ct

        if compute_units not in COMPUTE_UNITS:
            raise JobInputError(
                f"compute units must be one of {COMPUTE_UNITS}, not {compute_units!r}"
            )
        self.model = model
        self.quantization = quantization
        self.device = compute_units
        self.dtype = "fp16"
        self.threads = 0
        # Ours, Apple's Swift resources or Apple's Python packages: names, chunks, family
        self.folder = read_folder(folder)
        self.fingerprint = model_fingerprint(str(folder))
        self.xl = self.folder.xl
        problem = minimum_os_problem(self.folder.settings, platform.mac_ver()[0])
        if problem:
            raise CoreMLUnavailable(problem)
        units = getattr(ct.ComputeUnit, compute_units)
        self.models = {
            name: self._load(ct, path, units) for name, path in self.folder.paths.items()
        }
        self.input_types = {
            name: {k: d.dtype for k, d in declared.items()}
            for name, declared in self.folder.inputs.items()
        }
        self.encoders = [TEXT_ENCODER, *([TEXT_ENCODER_2] if self.xl else [])]
        self.tokenizers = self.folder.tokenizers(SEQ_LEN)
        self.scheduler_config = self.folder.scheduler_config

    @staticmethod
    def _load(ct: Any, path: Path, units: Any) -> Any:
        if path.suffix == ".mlmodelc":
            return ct.models.CompiledMLModel(str(path), compute_units=units)
        return ct.models.MLModel(str(path), compute_units=units)

    def versions(self) -> dict[str, str]:
        import coremltools

        return {
            "coremltools": coremltools.__version__,
            "macos": platform.mac_ver()[0],
            **({"model_fingerprint": self.fingerprint} if self.fingerprint else {}),
        }

    def _predict(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """One model's prediction, each input cast to the dtype the model declares."""
        types = self.input_types[name]
        return self.models[name].predict(
            {k: np.ascontiguousarray(v, dtype=types.get(k, v.dtype)) for k, v in inputs.items()}
        )

    def _unet(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The guided noise prediction: the UNet whole, or its chunks in turn, each given what
        it declares from the UNet's inputs and the earlier chunks' outputs (as Apple's Swift
        pipeline chains UnetChunk1 and UnetChunk2)."""
        available = dict(inputs)
        out: dict[str, Any] = {}
        for part in self.folder.unet_parts:
            declared = self.input_types[part]
            missing = sorted(set(declared) - set(available))
            if missing:
                raise JobInputError(f"{part} needs inputs {missing} that nothing before it gives")
            out = self._predict(part, {k: available[k] for k in declared})
            available.update(out)
        noise = out["noise_pred"] if "noise_pred" in out else next(iter(out.values()))
        return np.asarray(noise, dtype=np.float32)

    def _encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """A prompt's context for the UNet and the last encoder's pooled output (which SDXL's
        UNet takes): SD's encoder's last hidden state; SDXL's two penultimate hidden states,
        concatenated, and the second encoder's projected pooled output (as the SDXL pipeline
        encodes)."""
        hidden, pooled = [], np.zeros(0, dtype=np.float32)
        for name, tokenizer in zip(self.encoders, self.tokenizers, strict=True):
            ids = tokenizer(
                text, padding="max_length", max_length=SEQ_LEN, truncation=True, return_tensors="np"
            ).input_ids
            out = self._predict(name, {"input_ids": ids.astype(np.float32)})
            hidden.append(np.asarray(out["hidden_embeds" if self.xl else "last_hidden_state"]))
            pooled = np.asarray(out["pooled_outputs"], dtype=np.float32)
        return np.concatenate(hidden, axis=-1).astype(np.float32), pooled

    def _encode_pair(
        self, request: GenerationRequest
    ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
        """The guided pair's context (negative first, as diffusers batches it) and SDXL's
        added inputs. SDXL with an empty negative prompt: zeros where its config says so."""
        cond, pooled = self._encode(request.prompt)
        if self.xl and not request.negative_prompt and self.folder.force_zeros_for_empty_prompt:
            uncond, uncond_pooled = np.zeros_like(cond), np.zeros_like(pooled)
        else:
            uncond, uncond_pooled = self._encode(request.negative_prompt)
        hidden = np.concatenate([uncond, cond])
        if not self.xl:
            return hidden, None
        return hidden, {
            "time_ids": sdxl_time_ids(request.width, request.height),
            "text_embeds": np.concatenate([uncond_pooled, pooled]),
        }

    def generate_batch(
        self, requests: Sequence[GenerationRequest], should_stop: Callable[[], bool] | None = None
    ) -> list[GenerationResult]:
        """Image by image: a converted UNet has a fixed batch of 2 (guidance's two halves), as
        in Apple's own pipeline, which refuses batches; the jobs still share the loaded model."""
        return [self.generate(r, should_stop) for r in requests]

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> GenerationResult:
        import torch
        from PIL import Image

        from workers.models.schedulers import build_scheduler

        height, width = (d * self.folder.vae_scale for d in self.folder.sample_shape[-2:])
        if (request.width, request.height) != (width, height):
            raise JobInputError(
                f"this Core ML model was converted for {width}x{height}, "
                f"not {request.width}x{request.height}"
            )
        # 1. Text encoding (negative prompt first, as diffusers batches it)
        t0 = time.perf_counter()
        hidden, added = self._encode_pair(request)
        t1 = time.perf_counter()
        # 2. Denoising: diffusers' scheduler, CPU noise from the job's seed
        scheduler = build_scheduler(request.scheduler, self.scheduler_config)
        scheduler.set_timesteps(request.steps)
        shape = self.folder.sample_shape[1:]
        g = torch.Generator("cpu").manual_seed(request.seed)
        latents = torch.randn((1, *shape), generator=g) * scheduler.init_noise_sigma
        # Ancestral and SDE steps draw fresh noise: from the job's generator, as diffusers'
        # pipelines pass it (never torch's global RNG, which made euler_a irreproducible).
        step_kwargs = (
            {"generator": g} if "generator" in inspect.signature(scheduler.step).parameters else {}
        )
        step_ends = []
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(latents, t).numpy()
            out = self._unet(unet_inputs(x, float(t), hidden, added))
            uncond, cond = np.split(np.asarray(out, dtype=np.float32), 2)
            noise = torch.from_numpy(uncond + request.guidance_scale * (cond - uncond))
            latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
            step_ends.append(time.perf_counter())
            if should_stop is not None and should_stop():
                raise JobInterrupted(f"stopped after step {len(step_ends)}")
        t2 = time.perf_counter()
        # 3. VAE decode
        z = (latents / self.folder.vae_scaling_factor).numpy().astype(np.float32)
        image = np.asarray(self._predict(VAE_DECODER, {"z": z})["image"], dtype=np.float32)[0]
        pixels = ((image.transpose(1, 2, 0) / 2 + 0.5).clip(0, 1) * 255).round().astype(np.uint8)
        t3 = time.perf_counter()
        starts = [t1, *step_ends[:-1]]
        return GenerationResult(
            image=Image.fromarray(pixels),
            text_encode_s=t1 - t0,
            denoise_s=t2 - t1,
            decode_s=t3 - t2,
            unet_evaluations=len(step_ends) * 2,
            step_times=[round(e - s, 6) for s, e in zip(starts, step_ends, strict=True)],
        )
