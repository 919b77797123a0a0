"""Single-file checkpoints: one ``.safetensors`` in the original Stable Diffusion layout, as
A1111 users keep them (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``).

Loading is offline. A checkpoint of the tiny family (marked in the file's metadata) loads
through our own mapping into a pipeline of the built-in tiny folder's configuration; any other
through diffusers' ``from_single_file`` with the configuration diffusers infers from the
weights (Stable Diffusion 1.x: ``stable-diffusion-v1-5/stable-diffusion-v1-5``), which must
then be in this machine's Hugging Face cache. ``export_checkpoint`` writes a pipeline in this layout (our
own key mapping, the inverse of the one diffusers applies when it loads one), so a model made
or compressed here can be used by tools that only take single files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHECKPOINT_SUFFIXES = (".safetensors",)
FAMILY_KEY = "orchestrate_family"  # in the file's safetensors metadata
TINY_FAMILY = "tiny"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_RESNET = (
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("conv_shortcut", "nin_shortcut"),
)
_VAE_ATTENTION = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)


def is_checkpoint_file(model: str) -> bool:
    return model.lower().endswith(CHECKPOINT_SUFFIXES)


def family(path: Path) -> str | None:
    """The family recorded in a checkpoint's metadata (None for one made elsewhere)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return (fh.metadata() or {}).get(FAMILY_KEY)


def _pairs(table: tuple[tuple[str, str], ...], ours: str, theirs: str) -> list[tuple[str, str]]:
    return [(f"{ours}{a}.", f"{theirs}{b}.") for a, b in table]


def unet_prefixes(config: Any) -> list[tuple[str, str]]:
    """(diffusers prefix, original prefix) for every layer of a UNet2DConditionModel of the
    SD 1.x/2.x shape: down blocks of ``layers_per_block`` resnets (and attentions; one count, or
    one per level), a middle block, up blocks of one more. The original numbers its input and
    output blocks in one sequence each, a down- or upsampler taking a slot of its own (input)
    or riding on its level's last block (output)."""
    levels = len(config.block_out_channels)
    per = _as_list(config.layers_per_block)
    per = per * levels if len(per) == 1 else per
    pairs = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
    ]
    i = 1
    for b in range(levels):
        for j in range(per[b]):
            pairs += _pairs(_UNET_RESNET, f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{i}.0.")
            pairs.append((f"down_blocks.{b}.attentions.{j}.", f"input_blocks.{i}.1."))
            i += 1
        if b < levels - 1:
            pairs.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{i}.0.op."))
            i += 1
    pairs += _pairs(_UNET_RESNET, "mid_block.resnets.0.", "middle_block.0.")
    pairs.append(("mid_block.attentions.0.", "middle_block.1."))
    pairs += _pairs(_UNET_RESNET, "mid_block.resnets.1.", "middle_block.2.")
    i = 0
    for b, kind in enumerate(config.up_block_types):
        attention = kind.startswith("CrossAttn")
        n = per[levels - 1 - b] + 1
        for j in range(n):
            pairs += _pairs(
                _UNET_RESNET, f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{i + j}.0."
            )
            pairs.append((f"up_blocks.{b}.attentions.{j}.", f"output_blocks.{i + j}.1."))
        if b < levels - 1:
            slot = 2 if attention else 1
            pairs.append(
                (f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{i + n - 1}.{slot}.conv.")
            )
        i += n
    return pairs


def vae_prefixes(config: Any) -> list[tuple[str, str]]:
    """(diffusers prefix, original prefix) for every layer of an AutoencoderKL; the original
    numbers the decoder's levels from the bottom."""
    levels = len(config.block_out_channels)
    per = config.layers_per_block
    pairs = [
        (f"{part}.{name}.", f"{part}.{name}.")
        for part in ("encoder", "decoder")
        for name in ("conv_in", "conv_out")
    ]
    pairs += [("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv.")]
    pairs += [(f"{p}.conv_norm_out.", f"{p}.norm_out.") for p in ("encoder", "decoder")]
    for part in ("encoder", "decoder"):
        pairs += _pairs(_VAE_RESNET, f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.")
        pairs += _pairs(_VAE_ATTENTION, f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")
        pairs += _pairs(_VAE_RESNET, f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.")
    for i in range(levels):
        for j in range(per):
            ours, theirs = f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."
            pairs += _pairs(_VAE_RESNET, ours, theirs)
        if i < levels - 1:
            pairs.append(
                (
                    f"encoder.down_blocks.{i}.downsamplers.0.conv.",
                    f"encoder.down.{i}.downsample.conv.",
                )
            )
        up = levels - 1 - i
        for j in range(per + 1):
            ours, theirs = f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}."
            pairs += _pairs(_VAE_RESNET, ours, theirs)
        if i < levels - 1:
            pairs.append(
                (f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{up}.upsample.conv.")
            )
    return pairs


def _rename(state: dict[str, Any], pairs: list[tuple[str, str]], what: str) -> dict[str, Any]:
    ordered = sorted(pairs, key=lambda p: len(p[0]), reverse=True)  # the most specific first
    out = {}
    for key, value in state.items():
        for ours, theirs in ordered:
            if key.startswith(ours):
                out[theirs + key[len(ours) :]] = value
                break
        else:
            raise ValueError(f"{what} layer {key!r} has no place in the single-file layout")
    return out


def to_single_file(pipe: Any) -> dict[str, Any]:
    """A StableDiffusionPipeline's weights in the original layout (contiguous tensors)."""
    state: dict[str, Any] = {}
    unet = _rename(pipe.unet.state_dict(), unet_prefixes(pipe.unet.config), "UNet")
    state.update({UNET_PREFIX + k: v for k, v in unet.items()})
    vae = _rename(pipe.vae.state_dict(), vae_prefixes(pipe.vae.config), "VAE")
    for key, value in vae.items():
        if ".attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original's attention is 1x1 convolutions
        state[VAE_PREFIX + key] = value
    for key, value in pipe.text_encoder.state_dict().items():
        if not key.endswith("position_ids"):
            # the original names the CLIP text model's layers from ``text_model.``
            name = key if key.startswith("text_model.") else "text_model." + key
            state[CLIP_PREFIX + name] = value
    return {k: v.detach().contiguous() for k, v in state.items()}


def export_checkpoint(pipe: Any, out: Path, family_name: str | None = None) -> Path:
    """Write ``pipe`` as one ``.safetensors`` in the original layout, atomically."""
    import os
    import tempfile

    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        metadata = {"format": "pt", **({FAMILY_KEY: family_name} if family_name else {})}
        save_file(to_single_file(pipe), tmp, metadata=metadata)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def family_of(pipe: Any) -> str | None:
    """TINY_FAMILY for a pipeline of the built-in tiny model's shape (itself or a variant of
    it), else None (diffusers infers other families from the weights)."""
    import json

    from workers.tiny import ensure_tiny_model

    tiny = json.loads((ensure_tiny_model() / "unet" / "config.json").read_text())
    keys = ("block_out_channels", "layers_per_block", "cross_attention_dim", "sample_size")
    same = all(list(_as_list(pipe.unet.config[k])) == _as_list(tiny[k]) for k in keys)
    return TINY_FAMILY if same else None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def from_single_file(state: dict[str, Any], pipe: Any) -> None:
    """Load weights in the original layout into ``pipe``: the inverse of ``to_single_file``,
    for a pipeline of the checkpoint's own configuration. Every layer of each part must be
    in the file and every tensor of the file must have a place (a ValueError names the first
    that does not)."""
    parts: dict[str, dict[str, Any]] = {UNET_PREFIX: {}, VAE_PREFIX: {}, CLIP_PREFIX: {}}
    for key, value in state.items():
        prefix = next((p for p in parts if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"tensor {key!r} belongs to no part of a Stable Diffusion checkpoint")
        parts[prefix][key[len(prefix) :]] = value
    back = [(theirs, ours) for ours, theirs in unet_prefixes(pipe.unet.config)]
    _load(pipe.unet, _rename(parts[UNET_PREFIX], back, "UNet"), "UNet")
    vae = _rename(parts[VAE_PREFIX], [(t, o) for o, t in vae_prefixes(pipe.vae.config)], "VAE")
    for key, value in vae.items():
        if ".attentions." in key and key.endswith(".weight") and value.ndim == 4:
            vae[key] = value[:, :, 0, 0]  # 1x1 convolutions back to linear layers
    _load(pipe.vae, vae, "VAE")
    own = pipe.text_encoder.state_dict()
    prefixed = any(k.startswith("text_model.") for k in own)
    clip = {
        (k if prefixed else k.removeprefix("text_model.")): v for k, v in parts[CLIP_PREFIX].items()
    }
    _load(pipe.text_encoder, clip, "text encoder", optional=("position_ids",))


def _load(module: Any, state: dict[str, Any], what: str, optional: tuple[str, ...] = ()) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(optional)]
    extra = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    for problem, keys in (("lacks", missing), ("has no place for", extra)):
        if keys:
            raise ValueError(f"the checkpoint {problem} {what} layer {keys[0]!r}")
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{what} layer {k!r} is {tuple(state[k].shape)} in the checkpoint, "
            f"{tuple(own[k].shape)} in the model"
        )
    module.load_state_dict(state, strict=False)


def load_checkpoint(path: Path, dtype: Any) -> Any:
    """A StableDiffusionPipeline from a single file, offline, with its family's configuration.

    A checkpoint of the tiny family loads through our own mapping into a pipeline of the
    built-in folder's configuration: diffusers' single-file conversion assumes one resnet
    count for every UNet level (``layers_per_block + 1``), and the tiny UNet has one per
    level. Any other goes through diffusers' ``from_single_file``."""
    from diffusers import StableDiffusionPipeline

    options = {
        "local_files_only": True,
        "torch_dtype": dtype,
        "safety_checker": None,
        "requires_safety_checker": False,
    }
    if family(path) == TINY_FAMILY:
        from safetensors.torch import load_file

        from workers.tiny import ensure_tiny_model

        pipe = StableDiffusionPipeline.from_pretrained(str(ensure_tiny_model()), **options)
        from_single_file(load_file(str(path)), pipe)
        return pipe
    return StableDiffusionPipeline.from_single_file(str(path), **options)
