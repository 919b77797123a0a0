"""A stand-in for coremltools' ``MLModel``, for tests on machines without Core ML (Linux).

``MLModel.predict`` needs macOS. This class reads what a converted package itself says, its
spec (input names, shapes and dtypes, output names) and its weights (decompressed when
palettized), puts those weights into a torch module of the same architecture, and evaluates
that module in fp32 with the package's declared layouts. An input whose name, shape or dtype
the spec does not declare is refused, as Core ML refuses it. It is used only in tests: the
product never pretends to run Core ML off macOS.

What it cannot show: Core ML's own kernels, fp16 activations on the GPU or Neural Engine, and
the compute-unit split; a Mac run confirms those (docs/coreml.md, "What is verified, and what a
Mac must check").
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.apple_layout import COMPILED_FROM, role_modules, role_of
from workers.backends.coreml_folder import model_inputs
from workers.compression.coreml import package_weights


def _const_name(parameter: str) -> str:
    return re.sub(r"\W", "_", parameter)


class StandInModel:
    """``predict`` like a loaded Core ML model, through torch, with the package's own spec and
    weights. ``module``: a torch module of the package's architecture (its parameter names
    are the converter's const names, as coremltools keeps the module paths)."""

    def __init__(self, path: Path, module: Any) -> None:
        import coremltools as ct
        import torch

        self.path = path
        # What the model declares, read as the backend reads it (a package's spec, or a
        # compiled model's metadata.json); a compiled model's weights are the package it was
        # made from (tests/apple_layout.py).
        self.inputs = {name: (d.shape, d.dtype) for name, d in model_inputs(path).items()}
        if path.suffix == ".mlmodelc":
            meta = json.loads((path / "metadata.json").read_text())[0]
            self.outputs = [o["name"] for o in meta["outputSchema"]]
            package = COMPILED_FROM[path]
        else:
            spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
            self.outputs = [o.name for o in spec.description.output]
            package = path
        consts = package_weights(package)
        self.loaded: list[str] = []
        self.missing: list[str] = []
        with torch.no_grad():
            for name, param in module.named_parameters():
                base = _const_name(name)
                value = consts.get(base, consts.get(f"{base}_to_fp16"))
                if value is not None and tuple(value.shape) == tuple(param.shape):
                    param.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
                    self.loaded.append(name)
                else:
                    self.missing.append(name)
        self.module = module.eval()

    def predict(self, data: dict[str, Any]) -> dict[str, np.ndarray]:
        import torch

        if set(data) != set(self.inputs):
            raise ValueError(
                f"{self.path.name}: inputs {sorted(data)} are not the declared {sorted(self.inputs)}"
            )
        args = []
        for name, (shape, dtype) in self.inputs.items():
            value = data[name]
            if not isinstance(value, np.ndarray) or value.dtype != dtype:
                got = getattr(value, "dtype", type(value).__name__)
                raise ValueError(
                    f"{self.path.name}: input {name!r} is {got}, declared {np.dtype(dtype)}"
                )
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"{self.path.name}: input {name!r} has shape {value.shape}, declared {shape}"
                )
            args.append(torch.from_numpy(value.astype(np.float32)))
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {
            n: o.detach().numpy().astype(np.float32) for n, o in zip(self.outputs, out, strict=True)
        }


OFF_MACOS = pytest.mark.skipif(
    sys.platform == "darwin", reason="on macOS the Core ML backend runs Core ML itself"
)


def pixels(backend: Any, request: Any) -> np.ndarray:
    """A backend's image for ``request``, as float64 pixels."""
    return np.asarray(backend.generate(request).image).astype(np.float64)


def image_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two 8-bit images in dB (inf when equal)."""
    mse = float(np.mean((a - b) ** 2))
    return 10 * math.log10(255**2 / mse) if mse else math.inf


@contextlib.contextmanager
def backends_on(
    source_pipe: Any, folders: dict[str, Path], model: str = "tiny"
) -> Iterator[dict[str, Any]]:
    """The Core ML backend on each folder, stand-ins installed while the context lasts."""
    from workers.backends.coreml import CoreMLBackend

    with pytest.MonkeyPatch.context() as mp:
        install(mp, source_pipe)
        yield {
            name: CoreMLBackend(model, folder, compute_units="CPU_ONLY")
            for name, folder in folders.items()
        }


def install(monkeypatch: Any, source_pipe: Any) -> dict[str, StandInModel]:
    """Make ``CoreMLBackend`` load stand-ins (architecture from ``source_pipe``, weights and
    spec from each package) and run off macOS. Returns the stand-ins it made, by package."""
    import copy

    from workers.backends import coreml

    made: dict[str, StandInModel] = {}

    def load(_ct: Any, path: Path, _units: Any) -> StandInModel:
        # the architecture by the model's role (our names or Apple's, UNet chunks included)
        module = role_modules(copy.deepcopy(source_pipe))[role_of(path)]
        made[path.stem] = StandInModel(path, module)
        return made[path.stem]

    monkeypatch.setattr(coreml, "check_platform", lambda: None)
    monkeypatch.setattr(coreml.CoreMLBackend, "_load", staticmethod(load))
    return made
