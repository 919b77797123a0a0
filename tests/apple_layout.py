"""Folders in Apple's Core ML layouts, built in tests from the tiny model (nothing downloaded):

- ``apple_packages``: Apple's Python converter's output, ``Stable_Diffusion_version_<v>_*.mlpackage``;
- ``apple_resources``: Apple's Swift resources, ``TextEncoder.mlmodelc`` ... with the UNet whole
  or as ``UnetChunk1``/``UnetChunk2``, ``vocab.json`` and ``merges.txt`` and nothing else.

Compiling a package to ``.mlmodelc`` needs macOS, so a compiled model here is a folder holding
what the backend reads from one, its ``metadata.json`` in Core ML's schema (input names, dtypes
and shapes), written from the package's own spec; the stand-in (tests/coreml_standin.py) takes
its weights from the package it was made from (``COMPILED_FROM``). Apple's chunker splits the
UNet's MIL program where half its weights are; the chunks here split the torch UNet after its
middle block and are converted as they are. The backend relies on neither: it chains chunks
by the names of their declared inputs and outputs, as Apple's Swift pipeline does.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from workers.backends.coreml_folder import UNET
from workers.compression.coreml import _trace_and_convert, _wrappers

COMPILED_FROM: dict[Path, Path] = {}  # a stand-in .mlmodelc -> the package it was made from
_DTYPE_NAMES = {65568: "Float32", 65552: "Float16", 131104: "Int32"}
APPLE_NAMES = {
    "TextEncoder": "text_encoder",
    "TextEncoder2": "text_encoder_2",
    "Unet": "unet",
    "UnetChunk1": "unet_chunk1",
    "UnetChunk2": "unet_chunk2",
    "VAEDecoder": "vae_decoder",
}


def _schema(features: Any) -> list[dict[str, str]]:
    rows = []
    for f in features:
        arr = f.type.multiArrayType
        dtype = _DTYPE_NAMES[arr.dataType]
        shape = [int(d) for d in arr.shape]
        rows.append(
            {
                "name": f.name,
                "type": "MultiArray",
                "dataType": dtype,
                "shape": json.dumps(shape),
                "formattedType": f"MultiArray ({dtype} {' × '.join(map(str, shape))})",
                "isOptional": "0",
                "hasShapeFlexibility": "0",
            }
        )
    return rows


def compiled_stand_in(package: Path, target: Path) -> Path:
    """A ``.mlmodelc`` folder for ``package``: its ``metadata.json`` as Core ML writes it."""
    import coremltools as ct

    spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
    target.mkdir(parents=True)
    meta = [
        {
            "metadataOutputVersion": "3.0",
            "specificationVersion": spec.specificationVersion,
            "modelType": {"name": "MLModelType_mlProgram"},
            "inputSchema": _schema(spec.description.input),
            "outputSchema": _schema(spec.description.output),
        }
    ]
    (target / "metadata.json").write_text(json.dumps(meta, indent=2))
    COMPILED_FROM[target] = package
    return target


def unet_chunk_modules(pipe: Any) -> tuple[Any, Any]:
    """The SD UNet of ``pipe`` in two parts, in Apple's input layout: the first takes the UNet's
    inputs and gives the time embedding, the middle block's output and the skip connections;
    the second takes those and the text context and gives ``noise_pred``."""
    from torch import nn

    unet = pipe.unet

    class Chunk1(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any) -> Any:
            u = self.unet
            context = encoder_hidden_states.squeeze(2).transpose(1, 2)
            emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), None)
            h = u.conv_in(sample)
            skips = [h]
            for block in u.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
                else:
                    h, res = block(hidden_states=h, temb=emb)
                skips += res
            h = u.mid_block(h, emb, encoder_hidden_states=context)
            return (emb, h, *skips)

    class Chunk2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, encoder_hidden_states: Any, emb: Any, h: Any, *skips: Any) -> Any:
            u = self.unet
            context = encoder_hidden_states.squeeze(2).transpose(1, 2)
            rest = list(skips)
            for block in u.up_blocks:
                res, rest = tuple(rest[-len(block.resnets) :]), rest[: -len(block.resnets)]
                if getattr(block, "has_cross_attention", False):
                    h = block(
                        hidden_states=h,
                        temb=emb,
                        res_hidden_states_tuple=res,
                        encoder_hidden_states=context,
                    )
                else:
                    h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res)
            h = u.conv_out(u.conv_act(u.conv_norm_out(h)))
            return (h,)

    return Chunk1().eval(), Chunk2().eval()


def chunk_example(pipe: Any, shapes: dict[str, list[int]]) -> tuple[list[Any], list[Any]]:
    """Example inputs of both chunks (the second's from running the first)."""
    import torch

    g = torch.Generator().manual_seed(0)
    sample = torch.randn(shapes["sample"], generator=g)
    timestep = torch.full(shapes["timestep"], 500.0)
    context = torch.randn(shapes["encoder_hidden_states"], generator=g)
    first, _ = unet_chunk_modules(pipe)
    with torch.inference_mode():
        outs = first(sample, timestep, context)
    return [sample, timestep, context], [context, *[o.clone() for o in outs]]


def convert_chunks(pipe: Any, layout: dict[str, Any], dest: Path, precision: str) -> None:
    """``UnetChunk1.mlpackage`` and ``UnetChunk2.mlpackage`` of ``pipe``'s UNet in ``dest``."""
    import coremltools as ct

    shapes = layout["inputs"][UNET]
    first_in, second_in = chunk_example(pipe, shapes)
    skips = [f"skip_{i}" for i in range(len(second_in) - 3)]
    first, second = unet_chunk_modules(pipe)
    first_shapes = dict(shapes)
    second_shapes = {
        "encoder_hidden_states": shapes["encoder_hidden_states"],
        **{n: list(t.shape) for n, t in zip(["emb", "h", *skips], second_in[1:], strict=True)},
    }
    for name, module, example, shp, outputs in (
        ("UnetChunk1", first, first_in, first_shapes, ["emb", "h", *skips]),
        ("UnetChunk2", second, second_in, second_shapes, ["noise_pred"]),
    ):
        with warnings.catch_warnings():  # tracing's expected warnings, as convert_pipeline
            warnings.simplefilter("ignore")
            model = _trace_and_convert(ct, module, example, shp, outputs, precision)
        model.save(str(dest / f"{name}.mlpackage"))


def apple_resources(
    source: Path, dest: Path, pipe: Any, *, chunked: bool = False, precision: str = "fp16"
) -> Path:
    """Apple's Swift resources from one of our converted folders: compiled names only,
    ``vocab.json``, ``merges.txt``; no tokenizer/scheduler folders, no orchestrate-coreml.json."""
    dest.mkdir(parents=True)
    packages = dest / "_packages"  # what the compiled stand-ins were made from
    packages.mkdir()
    names = ["TextEncoder", "VAEDecoder"]
    if (source / "TextEncoder2.mlpackage").exists():
        names.append("TextEncoder2")
    for name in names:
        shutil.copytree(source / f"{name}.mlpackage", packages / f"{name}.mlpackage")
    if chunked:
        layout = json.loads((source / "orchestrate-coreml.json").read_text())
        convert_chunks(pipe, layout, packages, precision)
        names += ["UnetChunk1", "UnetChunk2"]
    else:
        shutil.copytree(source / "Unet.mlpackage", packages / "Unet.mlpackage")
        names.append("Unet")
    for name in names:
        compiled_stand_in(packages / f"{name}.mlpackage", dest / f"{name}.mlmodelc")
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(source / f, dest / f)
    return dest


def apple_packages(source: Path, dest: Path, version: str, *, tokenizer: bool = True) -> Path:
    """Apple's Python converter's output from one of our folders: its package names; with
    ``tokenizer``, the vocab.json and merges.txt a user puts beside them."""
    dest.mkdir(parents=True)
    for package in source.glob("*.mlpackage"):
        apple = APPLE_NAMES[package.stem]
        shutil.copytree(package, dest / f"Stable_Diffusion_version_{version}_{apple}.mlpackage")
    if tokenizer:
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(source / f, dest / f)
    return dest


def role_of(path: Path) -> str:
    """Which model a path is, by Apple's names or ours."""
    stem = path.name.rsplit(".", 1)[0]
    for ours, apple in sorted(APPLE_NAMES.items(), key=lambda kv: -len(kv[1])):
        if stem == ours or stem.endswith(f"_{apple}"):
            return ours
    raise KeyError(path)


def role_modules(pipe: Any) -> dict[str, Any]:
    """The torch modules a stand-in evaluates for each role, chunks included."""
    modules = {name: module for name, (module, _) in _wrappers(pipe).items()}
    modules["UnetChunk1"], modules["UnetChunk2"] = unet_chunk_modules(pipe)
    return modules
