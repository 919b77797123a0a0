"""The full-width blocks of the flow-matching transformers, timed for ``flow_samplers.py``: why
the sampler sweep is not run on the architectures at full size (one block of each at its real
width, random weights, one denoiser call at 256 and 64 px).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

GUIDANCE = 4.0  # of every row of flow_samplers.py, and of the timed call here

# Each family's full-width transformer as its published config gives it: a title, the full
# depth as (double-stream or MMDiT blocks, single-stream blocks; SD 3.5 Medium's 24 layers are
# all counted as the probe's dual-attention one, 13 of them are), denoiser calls a step with
# guidance 4 and the batch of each.
FULL_SIZE: dict[str, dict[str, Any]] = {
    "tiny-sd3": {
        "title": "SD 3.5 Medium MMDiT-X (24 heads x 64 = 1536 wide, 24 layers)",
        "full_blocks": (24, 0),
        "calls_per_step": 1,  # the guidance halves are one batch of 2
        "batch": 2,
    },
    "tiny-flux": {
        "title": "FLUX.1 dev (24 heads x 128 = 3072 wide, 19 double + 38 single blocks)",
        "full_blocks": (19, 38),
        "calls_per_step": 1,  # guidance is an input of the model
        "batch": 1,
    },
    "tiny-flux2": {
        "title": "FLUX.2 Klein 4B (24 heads x 128 = 3072 wide, 5 double + 20 single blocks)",
        "full_blocks": (5, 20),
        "calls_per_step": 2,  # true CFG: a call for each half
        "batch": 1,
    },
}
PROBE_TEXT_TOKENS = 32  # the tiny models' text length; the real ones take 333 (SD3) or 512
PROBE_SIZES = (256, 64)
PROBE_STEPS = 100
PROBE_BUDGET_S = 5.0  # "a few seconds" an image at 100 steps


def _one_block(model: str) -> Any:
    from diffusers import Flux2Transformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel

    if model == "tiny-sd3":
        return SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=32,  # 384 in SD 3.5 (a 226M-value table); 32 covers 256 px
            dual_attention_layers=(0,),
            qk_norm="rms_norm",
        )
    if model == "tiny-flux":
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        )
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=128,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=7680,
        mlp_ratio=3.0,
        axes_dims_rope=(32, 32, 32, 32),
        guidance_embeds=False,
    )


def _call_inputs(model: str, size: int, batch: int) -> dict[str, Any]:
    import torch

    latent = size // 8
    tokens = (latent // 2) ** 2
    text = PROBE_TEXT_TOKENS
    if model == "tiny-sd3":
        return {
            "hidden_states": torch.randn(batch, 16, latent, latent),
            "encoder_hidden_states": torch.randn(batch, text, 4096),
            "pooled_projections": torch.randn(batch, 2048),
            "timestep": torch.full((batch,), 500.0),
        }
    if model == "tiny-flux":
        return {
            "hidden_states": torch.randn(batch, tokens, 64),
            "encoder_hidden_states": torch.randn(batch, text, 4096),
            "pooled_projections": torch.randn(batch, 768),
            "timestep": torch.full((batch,), 0.5),
            "img_ids": torch.zeros(tokens, 3),
            "txt_ids": torch.zeros(text, 3),
            "guidance": torch.full((batch,), GUIDANCE),
        }
    return {
        "hidden_states": torch.randn(batch, tokens, 128),
        "encoder_hidden_states": torch.randn(batch, text, 7680),
        "timestep": torch.full((batch,), 0.5),
        "img_ids": torch.zeros(tokens, 4),
        "txt_ids": torch.zeros(text, 4),
    }


def _params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def probe_full_size(model: str, threads: int) -> dict[str, Any]:
    """One block of the family's full-width transformer: its time per denoiser call, and what
    100 steps would take with it and with the full depth."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = FULL_SIZE[model]
    t0 = time.perf_counter()
    transformer = _one_block(model).eval()
    build_s = time.perf_counter() - t0
    double = _params(transformer.transformer_blocks[0])
    singles = getattr(transformer, "single_transformer_blocks", None)
    single = _params(singles[0]) if singles else 0
    total = _params(transformer)
    rest = total - double - single
    n_double, n_single = spec["full_blocks"]
    full = rest + n_double * double + n_single * single
    per_call: dict[str, float] = {}
    with torch.inference_mode():
        for size in PROBE_SIZES:
            inputs = _call_inputs(model, size, spec["batch"])
            transformer(**inputs, return_dict=False)  # warm-up at this size
            times = []
            for _ in range(2 if size == PROBE_SIZES[0] else 3):
                t0 = time.perf_counter()
                transformer(**inputs, return_dict=False)
                times.append(time.perf_counter() - t0)
            per_call[str(size)] = statistics.median(times)
    del transformer
    calls = spec["calls_per_step"] * PROBE_STEPS
    one_block = {size: calls * s for size, s in per_call.items()}
    full_depth = {size: s * full / total for size, s in one_block.items()}
    return {
        "architecture": spec["title"],
        "probe": "one block"
        + (" (a dual-attention MMDiT layer)" if model == "tiny-sd3" else " of each kind"),
        "probe_params_millions": round(total / 1e6, 1),
        "full_params_millions_extrapolated": round(full / 1e6, 1),
        "build_s": round(build_s, 2),
        "text_tokens": PROBE_TEXT_TOKENS,
        "batch_per_call": spec["batch"],
        "calls_per_step": spec["calls_per_step"],
        "seconds_per_call": {k: round(v, 3) for k, v in per_call.items()},
        "one_block_seconds_per_image_100_steps": {k: round(v, 1) for k, v in one_block.items()},
        "full_depth_seconds_per_image_100_steps": {k: round(v) for k, v in full_depth.items()},
        "fits_budget": one_block[str(PROBE_SIZES[0])] <= PROBE_BUDGET_S,
    }
