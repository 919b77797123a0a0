"""Core ML export and palettization: text encoder(s), UNet and VAE decoder to ``.mlpackage``
(mlprogram, fp16; SD 1.x/2.x and SDXL in Apple's layouts), in a folder the Core ML backend
loads and Apple's Swift ``StableDiffusion`` package can use once compiled (``TextEncoder``,
``TextEncoder2`` for SDXL, ``Unet``, ``VAEDecoder``, ``vocab.json``, ``merges.txt``). Conversion and palettization run on Linux; only prediction needs macOS.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import CompressionError
from workers.backends.coreml_folder import (
    LAYOUT,
    SEQ_LEN,
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    UNET,
    VAE_DECODER,
)
from workers.compression.palettize import (
    GROUPED_OS,
    PER_TENSOR_OS,
    Palette,
    Recipe,
    check_groups,
    kmeans_lut,
    recipe_minimum_os,
    recipe_palettes,
)

logger = logging.getLogger(__name__)

ATTENTIONS = ("original", "split_einsum", "split_einsum_v2")
PRECISIONS = ("fp16", "fp32")
# Deployment targets a folder is converted for (recorded as the layout's "minimum_os"); the
# macOS 15 program is the iOS 18 one, the first with grouped-channel lookup tables.
MINIMUM_OS = (PER_TENSOR_OS, GROUPED_OS)


def _quiet_coremltools() -> Any:
    warnings.filterwarnings("ignore", module="coremltools")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct

    return ct


class SplitEinsumAttnProcessor:
    """Attention computed head by head with einsum, the ANE-friendly form of Apple's
    ``split_einsum``: no (batch x heads) reshape, one small matmul pair per head."""

    def __call__(
        self,
        attn: Any,
        hidden_states: Any,
        encoder_hidden_states: Any = None,
        attention_mask: Any = None,
        temb: Any = None,
        **_: Any,
    ) -> Any:
        import torch

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.to_q(hidden_states)
        k = attn.to_k(context)
        v = attn.to_v(context)
        heads = attn.heads
        dim_head = q.shape[-1] // heads
        scale = dim_head**-0.5
        outs = []
        for h in range(heads):
            sl = slice(h * dim_head, (h + 1) * dim_head)
            weights = torch.einsum("bqd,bkd->bqk", q[..., sl], k[..., sl]) * scale
            outs.append(torch.einsum("bqk,bkd->bqd", weights.softmax(dim=-1), v[..., sl]))
        out = attn.to_out[0](torch.cat(outs, dim=-1))
        return attn.to_out[1](out)


def is_xl(pipe: Any) -> bool:
    """Whether a pipeline is SDXL's: a second text encoder and the UNet's added embeddings."""
    return getattr(pipe, "text_encoder_2", None) is not None


def _pooled_width(encoder: Any) -> int:
    """The width of an encoder's pooled output: its projection's when it has one (SDXL's
    second encoder, whose projected ``text_embeds`` the UNet takes), else its hidden size."""
    config = encoder.config
    return (
        int(getattr(config, "projection_dim", 0) or 0)
        if hasattr(encoder, "text_projection")
        else int(config.hidden_size)
    )


def _wrappers(pipe: Any) -> dict[str, tuple[Any, list[str]]]:
    """Each package's torch module, in Apple's layouts, and its output names. SD: TextEncoder
    (last hidden state, pooled), Unet, VAEDecoder. SDXL, as Apple converts it: TextEncoder and
    TextEncoder2 giving their penultimate hidden states (``hidden_embeds``; the UNet's context
    is the two, concatenated) and pooled outputs (the second's projected ``text_embeds`` is the
    UNet's pooled input), and a Unet that also takes ``time_ids`` and ``text_embeds``."""
    import torch
    from torch import nn

    xl = is_xl(pipe)

    class TextEncoder(nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.text_encoder = encoder

        def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ids = input_ids.to(torch.int64)
            if not xl:
                out = self.text_encoder(ids, return_dict=False)
                return out[0], out[1]
            out = self.text_encoder(ids, output_hidden_states=True)
            pooled = out.text_embeds if "text_embeds" in out else out.pooler_output
            return out.hidden_states[-2], pooled

    class Unet(nn.Module):
        """The UNet with Apple's input layout: encoder_hidden_states as (B, C, 1, 77)."""

        def __init__(self) -> None:
            super().__init__()
            self.unet = pipe.unet

        def forward(
            self,
            sample: torch.Tensor,
            timestep: torch.Tensor,
            encoder_hidden_states: torch.Tensor,
            *added: torch.Tensor,
        ) -> tuple[torch.Tensor]:
            states = encoder_hidden_states.squeeze(2).transpose(1, 2)
            extra = {"time_ids": added[0], "text_embeds": added[1]} if added else None
            out = self.unet(sample, timestep, states, added_cond_kwargs=extra, return_dict=False)
            return (out[0],)

    class VAEDecoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.post_quant_conv = pipe.vae.post_quant_conv
            self.decoder = pipe.vae.decoder

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.post_quant_conv(z))

    text_outputs = ["hidden_embeds" if xl else "last_hidden_state", "pooled_outputs"]
    modules: dict[str, tuple[Any, list[str]]] = {
        TEXT_ENCODER: (TextEncoder(pipe.text_encoder).eval(), text_outputs)
    }
    if xl:
        modules[TEXT_ENCODER_2] = (TextEncoder(pipe.text_encoder_2).eval(), text_outputs)
    modules[UNET] = (Unet().eval(), ["noise_pred"])
    modules[VAE_DECODER] = (VAEDecoder().eval(), ["image"])
    return modules


def input_shapes(
    pipe: Any, latent_size: int | None = None, batch: int = 2
) -> dict[str, dict[str, list[int]]]:
    """The fixed input shapes of each package (batch 2: classifier-free guidance)."""
    side = latent_size or int(pipe.unet.config.sample_size)
    channels = int(pipe.unet.config.in_channels)
    encoders = [pipe.text_encoder, *([pipe.text_encoder_2] if is_xl(pipe) else [])]
    hidden = sum(int(e.config.hidden_size) for e in encoders)
    shapes = {TEXT_ENCODER: {"input_ids": [1, SEQ_LEN]}}
    if is_xl(pipe):
        shapes[TEXT_ENCODER_2] = {"input_ids": [1, SEQ_LEN]}
    shapes[UNET] = {
        "sample": [batch, channels, side, side],
        "timestep": [batch],
        "encoder_hidden_states": [batch, hidden, 1, SEQ_LEN],
    }
    if is_xl(pipe):
        shapes[UNET]["time_ids"] = [batch, 6]  # original size, crop top-left, target size
        shapes[UNET]["text_embeds"] = [batch, _pooled_width(pipe.text_encoder_2)]
    shapes[VAE_DECODER] = {"z": [1, int(pipe.vae.config.latent_channels), side, side]}
    return shapes


def vae_precision(pipe: Any, precision: str) -> str:
    """SDXL's VAE overflows in fp16 (its config's ``force_upcast`` says so, and the SDXL
    pipeline decodes in fp32): its decoder package computes in fp32 whatever the rest uses."""
    if is_xl(pipe) and pipe.vae.config.get("force_upcast", False):
        return "fp32"
    return precision


def convert_pipeline(
    pipe: Any,
    out: Path,
    *,
    model_version: str,
    attention: str = "original",
    latent_size: int | None = None,
    precision: str = "fp16",
    minimum_os: str = PER_TENSOR_OS,
) -> dict[str, Any]:
    """Export the models (SD: three; SDXL: four, with the second text encoder) and the
    tokenizer/scheduler files into ``out`` (atomically).
    ``precision``: the packages' weights and compute, fp16 (what Apple ships and the Neural
    Engine runs) or fp32 (the torch model's own numbers: for checking a conversion).
    ``minimum_os``: the deployment target, ``macOS13`` (iOS 16) or ``macOS15`` (iOS 18, which
    grouped-channel palettization needs; see :func:`workers.compression.palettize.recipe_minimum_os`)."""
    import torch

    from workers.models.families import sdxl_time_ids

    ct = _quiet_coremltools()
    if attention not in ATTENTIONS:
        raise CompressionError(f"attention must be one of {ATTENTIONS}, not {attention!r}")
    if precision not in PRECISIONS:
        raise CompressionError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if minimum_os not in MINIMUM_OS:
        raise CompressionError(f"minimum_os must be one of {MINIMUM_OS}, not {minimum_os!r}")
    pipe = pipe.to(torch.float32)
    if attention == "split_einsum":
        pipe.unet.set_attn_processor(SplitEinsumAttnProcessor())
    elif attention == "split_einsum_v2":  # the Neural Engine's (B, C, 1, S) layout, in place
        from workers.compression.ane import to_neural_engine_layout

        to_neural_engine_layout(pipe.unet)
    shapes = input_shapes(pipe, latent_size)
    side = int(shapes[UNET]["sample"][-1]) * int(pipe.vae_scale_factor)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, (module, outputs) in _wrappers(pipe).items():
            g = torch.Generator().manual_seed(0)
            example = []
            for inp, shape in shapes[name].items():
                if inp == "input_ids":
                    vocab = int(module.text_encoder.config.vocab_size)
                    example.append(torch.randint(0, vocab, shape, generator=g).float())
                elif inp == "timestep":
                    example.append(torch.full(shape, 500.0))
                elif inp == "time_ids":
                    example.append(torch.from_numpy(sdxl_time_ids(side, side, shape[0])))
                else:
                    example.append(torch.randn(shape, generator=g))
            package_precision = vae_precision(pipe, precision) if name == VAE_DECODER else precision
            # Tracing and conversion warn about every Python branch they freeze and every op
            # they rewrite; for fixed shapes these are expected, and they bury real problems.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mlmodel = _trace_and_convert(
                    ct, module, example, shapes[name], outputs, package_precision, minimum_os
                )
            mlmodel.short_description = f"{name} of {model_version} (orchestrate)"
            mlmodel.save(str(tmp / f"{name}.mlpackage"))
        _write_resources(pipe, tmp)
        layout = {
            "model_version": model_version,
            "attention": attention,
            "inputs": shapes,
            "vae_scaling_factor": float(pipe.vae.config.scaling_factor),
            "vae_scale_factor": int(pipe.vae_scale_factor),  # image side / latent side
            "precision": precision,
            "vae_precision": vae_precision(pipe, precision),
            "family": "sdxl" if is_xl(pipe) else "sd",
            # SDXL: an empty negative prompt is zeros, not the encoding of "" (its pipeline's
            # config says which; SDXL base was trained so)
            "force_zeros_for_empty_prompt": bool(
                is_xl(pipe) and pipe.config.get("force_zeros_for_empty_prompt", True)
            ),
            "minimum_os": minimum_os,
            "palettization": None,
        }
        (tmp / LAYOUT).write_text(json.dumps(layout, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return layout


def _trace_and_convert(
    ct: Any,
    module: Any,
    example: list[Any],
    shapes: dict[str, list[int]],
    outputs: list[str],
    precision: str = "fp16",
    minimum_os: str = PER_TENSOR_OS,
) -> Any:
    import torch

    with torch.inference_mode():
        traced = torch.jit.trace(module, tuple(example), strict=False)
    return ct.convert(
        traced,
        convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, minimum_os),
        inputs=[ct.TensorType(name=n, shape=s) for n, s in shapes.items()],
        outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs],
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        skip_model_load=True,
    )


def _write_resources(pipe: Any, folder: Path) -> None:
    """Tokenizer and scheduler beside the models: ``vocab.json``/``merges.txt`` for the Swift
    package, and the diffusers folders the Python backend loads."""
    tok = pipe.tokenizer
    tok.save_pretrained(folder / "tokenizer")
    if is_xl(pipe):  # its own padding token, for SDXL base
        pipe.tokenizer_2.save_pretrained(folder / "tokenizer_2")
    pipe.scheduler.save_pretrained(folder / "scheduler")
    vocab = tok.get_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    # transformers 5 writes tokenizer.json only; the merges come from the fast tokenizer's model
    merges = json.loads((folder / "tokenizer" / "tokenizer.json").read_text())["model"].get(
        "merges", []
    )
    lines = [" ".join(m) if isinstance(m, list) else m for m in merges]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{line}\n" for line in lines))


def coreml_weight_name(torch_module: str) -> str:
    """The const a torch weight becomes in our Unet package (coremltools keeps the path)."""
    return f"unet_{torch_module.replace('.', '_')}_weight_to_fp16"


def match_recipe(
    recipe: Recipe,
    unet: Any,
    weights: dict[str, np.ndarray],
    sources: dict[str, str] | None = None,
) -> Recipe:
    """Map a torch recipe onto Core ML weight names: by name first, checked by shape; a layer
    whose name is not found is matched by shape among the unclaimed weights of that shape, in
    model order (robust to renamed paths; never by values, which fine-tunes change).
    ``sources``, when given, receives the torch layer of each Core ML weight matched."""
    modules = dict(unet.named_modules())
    sources = {} if sources is None else sources
    matched: Recipe = {}
    claimed: set[str] = set()
    pending = []
    for name, value in recipe.items():
        shape = tuple(modules[name].weight.shape)
        cm = coreml_weight_name(name)
        if cm in weights and tuple(weights[cm].shape) == shape:
            matched[cm] = value
            claimed.add(cm)
            sources[cm] = name
        else:
            pending.append((name, value, shape))
    for name, value, shape in pending:
        same = [
            w for w, array in weights.items() if w not in claimed and tuple(array.shape) == shape
        ]
        if not same:
            raise KeyError(f"no Core ML weight matches torch layer {name!r} (shape {shape})")
        matched[same[0]] = value
        claimed.add(same[0])
        sources[same[0]] = name
    return matched


def palettizer_config(cto: Any, palette: Palette, source: Any = None) -> Any:
    """coremltools' config for one layer. Per tensor with ``source`` (the torch layer's fp32
    weight): its lookup table and indices are ours (``kmeans_lut`` on those fp32 values, as the
    torch variant palettizes), so the package holds exactly the torch variant's weights. Per
    grouped channel: coremltools' k-means per group (its custom mode is per tensor only)."""
    if palette.grouped:
        return cto.OpPalettizerConfig(
            mode="kmeans",
            nbits=palette.bits,
            granularity="per_grouped_channel",
            group_size=palette.group_size,
            weight_threshold=1,
        )
    if source is None:
        return cto.OpPalettizerConfig(mode="kmeans", nbits=palette.bits, weight_threshold=1)
    values = np.asarray(source, dtype=np.float32)

    def ours(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if tuple(weight.shape) != values.shape:
            raise CompressionError(
                f"weight of shape {weight.shape} is not its layer's {values.shape}"
            )
        lut, idx = kmeans_lut(values, palette.bits)  # the table in the package's weight dtype
        return lut.astype(weight.dtype), idx

    return cto.OpPalettizerConfig(mode="custom", lut_function=ours, weight_threshold=1)


def palettize_unet(folder: Path, unet: Any, recipe: Recipe) -> Recipe:
    """Palettize ``folder/Unet.mlpackage`` in place per a torch recipe (one lookup table per
    tensor, ours, so the package's weights are the torch variant's; or coremltools' k-means per
    group of output channels for ``"4g16"`` values, which need a folder converted for macOS
    15); returns the Core ML weight names and
    their palettization, as read back from the package."""
    ct = _quiet_coremltools()
    import coremltools.optimize.coreml as cto

    # 1. Check the recipe against the folder before the heavy work
    layout_path = folder / LAYOUT
    layout = json.loads(layout_path.read_text())
    palettes = recipe_palettes(recipe)
    check_groups(unet, palettes)
    have = layout.get("minimum_os", PER_TENSOR_OS)
    need = recipe_minimum_os(recipe)
    if MINIMUM_OS.index(have) < MINIMUM_OS.index(need):
        first = next(n for n, p in palettes.items() if p.grouped)
        raise CompressionError(
            f"{folder} was converted for {have}, but the recipe's grouped palettization (e.g. "
            f"{first!r}: {palettes[first].key!r}) needs {need} (iOS 18): convert it with "
            f"minimum_os={need!r}"
        )
    # 2. Palettize the matched weights
    path = folder / f"{UNET}.mlpackage"
    model = ct.models.MLModel(str(path), skip_model_load=True)
    weights = package_weights(path)
    wanted = {n: p.to_json() for n, p in palettes.items() if not p.keep}
    sources: dict[str, str] = {}
    by_name = match_recipe(wanted, unet, weights, sources)
    modules = dict(unet.named_modules())
    configs = {
        name: palettizer_config(
            cto, palette, modules[sources[name]].weight.detach().float().cpu().numpy()
        )
        for name, palette in recipe_palettes(by_name).items()
    }
    compressed = cto.palettize_weights(model, cto.OptimizationConfig(op_name_configs=configs))
    tmp = folder / f".{UNET}.palettized.mlpackage"
    compressed.save(str(tmp))
    # 3. coremltools leaves a weight it cannot palettize uncompressed with only a log warning:
    # read back what the package holds before it replaces the original
    found = read_palettization(tmp)
    expected = {  # one group of all the channels is one table for the tensor
        n: Palette(p.bits).to_json() if p.group_size == weights[n].shape[0] else p.to_json()
        for n, p in recipe_palettes(by_name).items()
    }
    if found != expected:
        shutil.rmtree(tmp, ignore_errors=True)
        wrong = sorted(n for n in expected if found.get(n) != expected[n])
        raise CompressionError(
            f"coremltools palettized {len(wrong)} weights other than asked, e.g. {wrong[0]!r}: "
            f"asked {expected[wrong[0]]!r}, got {found.get(wrong[0])!r}"
            if wrong
            else f"coremltools palettized weights the recipe does not name: {sorted(found)[:3]}"
        )
    shutil.rmtree(path)
    os.replace(tmp, path)
    layout["palettization"] = {"recipe": recipe, "coreml_bits": by_name}
    layout["minimum_os"] = have
    layout_path.write_text(json.dumps(layout, indent=2))
    return by_name


def read_palettization(mlpackage: Path) -> Recipe:
    """Each palettized weight's palettization, read back from the package's program
    (``constexpr_lut_to_dense`` ops): the int bits for one lookup table per tensor,
    ``"<bits>g<group size>"`` for tables per group of output channels. In the iOS 16 opset the
    table is an attribute; in the iOS 18 one an input whose shape is (groups, 1, ..., entries,
    1)."""
    ct = _quiet_coremltools()
    spec = ct.models.MLModel(str(mlpackage), skip_model_load=True).get_spec()
    found: Recipe = {}
    for function in spec.mlProgram.functions.values():
        block = function.block_specializations[function.opset]
        produced = {o.name: o for op in block.operations for o in op.outputs}
        for op in block.operations:
            if op.type != "constexpr_lut_to_dense":
                continue
            name = op.outputs[0].name.removesuffix("_palettized")
            out_shape = _dims(op.outputs[0].type)
            lut = op.attributes.get("lut", None)
            if lut is not None:  # iOS 16 opset: one table per tensor
                entries = math.prod(_dims(lut.type))
                found[name] = int(math.log2(entries))
                continue
            arg = op.inputs["lut"].arguments[0]
            if arg.WhichOneof("binding") == "value":
                shape = _dims(arg.value.type)
            else:
                shape = _dims(produced[arg.name].type)
            found[name] = _lut_palette(name, shape, out_shape).to_json()
    return found


def _dims(value_type: Any) -> list[int]:
    return [int(d.constant.size) for d in value_type.tensorType.dimensions]


def _lut_palette(name: str, lut: list[int], weight: list[int]) -> Palette:
    """The palettization an iOS 18 lookup table of shape ``lut`` gives a weight of ``weight``."""
    bits = int(math.log2(lut[-2]))
    split = [axis for axis, n in enumerate(lut[:-2]) if n > 1]
    if lut[-1] != 1 or split not in ([], [0]):
        raise CompressionError(
            f"{name}: a lookup table of shape {lut} (vector entries or groups along an axis "
            "other than the output channels) is not a palettization orchestrate writes"
        )
    return Palette(bits, weight[0] // lut[0] if split else None)


def compile_packages(folder: Path) -> dict[str, Any]:
    """Compile each ``.mlpackage`` of a converted folder to ``.mlmodelc`` beside it, so a
    worker loads the compiled model in seconds instead of specialising the package (minutes
    for SD) at every start. Compiling needs Core ML, so macOS; elsewhere nothing is written and
    the result says what to run on the Mac."""
    import sys

    packages = sorted(folder.glob("*.mlpackage"))
    if sys.platform != "darwin":
        commands = " && ".join(f"xcrun coremlcompiler compile {p.name} ." for p in packages)
        return {
            "compiled": [],
            "compile": f"compiling to .mlmodelc needs macOS: on the Mac, in {folder}, run "
            f"`{commands}` (workers load .mlmodelc first)",
        }
    ct = _quiet_coremltools()
    compiled = []
    for package in packages:
        target = package.with_suffix(".mlmodelc")
        tmp = package.with_suffix(".mlmodelc.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ct.utils.compile_model(str(package), str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        compiled.append(target.name)
    return {"compiled": compiled}


def package_megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def package_weights(mlpackage: Path) -> dict[str, np.ndarray]:
    """Every float constant of a package's program, by name in program order; a palettized
    weight decompressed, under its own name (the ``..._palettized`` suffix dropped). Reads the
    program once and decompresses each ``constexpr_*`` op where it stands: coremltools'
    ``decompress_weights`` does that too, but then runs the whole program through its passes
    and back to a spec (13x the time on tiny's UNet) to hand back a model, and
    ``get_weights_metadata`` reads that model again."""
    ct = _quiet_coremltools()
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.models import utils as model_utils

    model = ct.models.MLModel(str(mlpackage), skip_model_load=True)
    prog = model_utils._convert_model_spec_to_pymil_prog(
        model, model.get_spec().specificationVersion, milproto_load.load
    )
    found: dict[str, np.ndarray] = {}
    parts: set[str] = set()  # a lookup table's and its indices' consts: not weights

    def walk(block: Any) -> None:
        for op in block.operations:
            for inner in op.blocks:
                walk(inner)
            if op.op_type == "const":
                value = getattr(op.val, "val", None)
                if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    found[op.outputs[0].name] = value
            elif op.op_type.startswith("constexpr_"):
                parts.update(v.name for v in op.inputs.values() if hasattr(v, "name"))
                values = op.materialized_val_inference()
                values = values if isinstance(values, list | tuple) else [values]
                for var, value in zip(op.outputs, values, strict=True):
                    found[var.name.removesuffix("_palettized")] = np.asarray(value)

    for function in prog.functions.values():
        walk(function)
    return {name: value for name, value in found.items() if name not in parts}


def load_package_weights(unet: Any, mlpackage: Path) -> int:
    """Put a (palettized) package's weights, decompressed, into a torch UNet: to measure a
    compressed package's quality on machines that cannot run Core ML. Returns how many."""
    import torch

    dense = package_weights(mlpackage)
    loaded = 0
    for name, module in unet.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        value = dense.get(coreml_weight_name(name))
        if value is not None and tuple(value.shape) == tuple(weight.shape):
            module.weight.data = torch.from_numpy(np.asarray(value, dtype=np.float32))
            loaded += 1
    return loaded
