"""The Core ML backend (macOS only): a folder from ``orchestrate model convert|compress``.

Text encoder, UNet and VAE decoder run as Core ML models (compiled ``.mlmodelc`` where present,
which load in seconds; otherwise ``.mlpackage``, which Core ML specialises on first load, for
minutes on a real model); the denoising loop is the same diffusers scheduler stepping as the
diffusers backend, with the same CPU noise. On any other system it refuses: Core ML prediction
exists only on macOS, and nothing here pretends otherwise.

What runs on Linux, and is tested there: finding the models, the input layouts, the refusal.
The prediction path below is written against coremltools' documented ``MLModel.predict`` and
has not been run by this project's CI (no Mac in it).
"""

from __future__ import annotations

import inspect
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workers.backends import GenerationRequest, GenerationResult, JobInputError, JobInterrupted
from workers.compression.coreml import LAYOUT, SEQ_LEN, TEXT_ENCODER, UNET, VAE_DECODER

COMPUTE_UNITS = ("CPU_AND_NE", "CPU_AND_GPU", "ALL", "CPU_ONLY")
NEEDS_MACOS = (
    "the Core ML backend needs macOS: Core ML prediction (MLModel.predict) only runs on macOS, "
    "not on {system}; use --backend diffusers here"
)


class CoreMLUnavailable(JobInputError):
    """Core ML prediction is not possible on this machine."""


def model_paths(folder: Path) -> dict[str, Path]:
    """Each model of a converted folder: the compiled ``.mlmodelc`` if present, else the package."""
    paths = {}
    for name in (TEXT_ENCODER, UNET, VAE_DECODER):
        compiled, package = folder / f"{name}.mlmodelc", folder / f"{name}.mlpackage"
        if compiled.exists():
            paths[name] = compiled
        elif package.exists():
            paths[name] = package
        else:
            raise JobInputError(f"{folder} has no {name}.mlmodelc or {name}.mlpackage")
    return paths


SPEC_DTYPES = {65568: np.float32, 65552: np.float16, 131104: np.int32}  # ArrayDataType
_SCHEMA_DTYPES = {"Float32": np.float32, "Float16": np.float16, "Int32": np.int32}


def declared_inputs(path: Path) -> dict[str, Any]:
    """Each input of a model and the dtype it declares, read from the model itself (never
    assumed: Apple's packages take fp16, ours fp32 or fp16 by their precision). A package's
    spec is read with coremltools (any OS); a compiled ``.mlmodelc`` says it in its
    ``metadata.json``."""
    if path.suffix == ".mlmodelc":
        meta = json.loads((path / "metadata.json").read_text())
        entry = meta[0] if isinstance(meta, list) else meta
        return {
            i["name"]: _SCHEMA_DTYPES.get(i.get("dataType", "Float32"), np.float32)
            for i in entry.get("inputSchema", [])
        }
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    return {
        i.name: SPEC_DTYPES.get(i.type.multiArrayType.dataType, np.float32)
        for i in spec.description.input
    }


def unet_inputs(latents: np.ndarray, timestep: float, hidden: np.ndarray) -> dict[str, np.ndarray]:
    """The UNet's inputs in Apple's layout: a guided batch of two, and the text embeddings as
    (B, C, 1, 77) instead of diffusers' (B, 77, C)."""
    sample = np.concatenate([latents, latents]).astype(np.float32)
    return {
        "sample": sample,
        "timestep": np.full((sample.shape[0],), timestep, dtype=np.float32),
        "encoder_hidden_states": np.ascontiguousarray(
            hidden.transpose(0, 2, 1)[:, :, None, :]
        ).astype(np.float32),
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
        from transformers import CLIPTokenizer

        if compute_units not in COMPUTE_UNITS:
            raise JobInputError(
                f"compute units must be one of {COMPUTE_UNITS}, not {compute_units!r}"
            )
        self.model = model
        self.quantization = quantization
        self.device = compute_units
        self.dtype = "fp16"
        self.threads = 0
        self.layout = json.loads((folder / LAYOUT).read_text())
        problem = minimum_os_problem(self.layout, platform.mac_ver()[0])
        if problem:
            raise CoreMLUnavailable(problem)
        units = getattr(ct.ComputeUnit, compute_units)
        paths = model_paths(folder)
        self.models = {name: self._load(ct, path, units) for name, path in paths.items()}
        self.input_types = {name: declared_inputs(path) for name, path in paths.items()}
        self.tokenizer = CLIPTokenizer.from_pretrained(
            folder / "tokenizer", model_max_length=SEQ_LEN
        )
        self.scheduler_config = json.loads(
            (folder / "scheduler" / "scheduler_config.json").read_text()
        )

    @staticmethod
    def _load(ct: Any, path: Path, units: Any) -> Any:
        if path.suffix == ".mlmodelc":
            return ct.models.CompiledMLModel(str(path), compute_units=units)
        return ct.models.MLModel(str(path), compute_units=units)

    def versions(self) -> dict[str, str]:
        import coremltools

        return {"coremltools": coremltools.__version__, "macos": platform.mac_ver()[0]}

    def _predict(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """One model's prediction, each input cast to the dtype the model declares."""
        types = self.input_types[name]
        return self.models[name].predict(
            {k: np.ascontiguousarray(v, dtype=types.get(k, v.dtype)) for k, v in inputs.items()}
        )

    def _encode(self, text: str) -> np.ndarray:
        ids = self.tokenizer(
            text, padding="max_length", max_length=SEQ_LEN, truncation=True, return_tensors="np"
        ).input_ids
        out = self._predict(TEXT_ENCODER, {"input_ids": ids.astype(np.float32)})
        return np.asarray(out["last_hidden_state"], dtype=np.float32)

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

        from workers.schedulers import build_scheduler

        side = self.layout["inputs"][UNET]["sample"][-1] * 8
        if (request.width, request.height) != (side, side):
            raise JobInputError(
                f"this Core ML model was converted for {side}x{side}, not {request.width}x{request.height}"
            )
        # 1. Text encoding (negative prompt first, as diffusers batches it)
        t0 = time.perf_counter()
        hidden = np.concatenate(
            [self._encode(request.negative_prompt), self._encode(request.prompt)]
        )
        t1 = time.perf_counter()
        # 2. Denoising: diffusers' scheduler, CPU noise from the job's seed
        scheduler = build_scheduler(request.scheduler, self.scheduler_config)
        scheduler.set_timesteps(request.steps)
        shape = self.layout["inputs"][UNET]["sample"][1:]
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
            out = self._predict(UNET, unet_inputs(x, float(t), hidden))["noise_pred"]
            uncond, cond = np.split(np.asarray(out, dtype=np.float32), 2)
            noise = torch.from_numpy(uncond + request.guidance_scale * (cond - uncond))
            latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
            step_ends.append(time.perf_counter())
            if should_stop is not None and should_stop():
                raise JobInterrupted(f"stopped after step {len(step_ends)}")
        t2 = time.perf_counter()
        # 3. VAE decode
        z = (latents / self.layout["vae_scaling_factor"]).numpy().astype(np.float32)
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
