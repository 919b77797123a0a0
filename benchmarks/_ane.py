"""split_einsum_v2 equivalence: the UNet in the Neural Engine's (B, C, 1, S) layout
(workers/compression/ane.py) against the diffusers UNet it was made from, fp32, on fixed
inputs (one guided pair, timestep 500): PSNR of the output (capped at 120 dB, peak = max
|reference|) and the largest absolute difference. Used by benchmarks/compression.py --ane."""

from __future__ import annotations

import copy
import time
from typing import Any


def equivalence(
    label: str, unet: Any, latent: int, context_width: int, added: int = 0
) -> dict[str, Any]:
    import torch

    from workers.compression.ane import to_neural_engine_layout
    from workers.compression.palettize import psnr

    unet = unet.float().eval()
    ane = copy.deepcopy(unet)
    replaced = to_neural_engine_layout(ane)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, latent, latent, generator=g)
    context = torch.randn(2, 77, context_width, generator=g)
    t = torch.tensor([500.0, 500.0])
    extra = None
    if added:
        side = latent * 8
        extra = {
            "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * 2).float(),
            "text_embeds": torch.randn(2, added, generator=g),
        }
    with torch.inference_mode():
        t0 = time.perf_counter()
        ref = unet(sample, t, context, added_cond_kwargs=extra).sample.numpy()
        t1 = time.perf_counter()
        out = ane(sample, t, context, added_cond_kwargs=extra).sample.numpy()
        t2 = time.perf_counter()
    return {
        "model": label,
        "latent": latent,
        "transformers_replaced": replaced,
        "psnr_db": round(psnr(ref, out, cap=300.0), 1),
        "max_abs_diff": float(abs(ref - out).max()),
        "diffusers_s": round(t1 - t0, 3),
        "ane_layout_s": round(t2 - t1, 3),
    }


def rows(tiny_pipe: Any, tiny_xl_pipe: Any | None, sd15: bool) -> list[dict[str, Any]]:
    # each tiny model at its own latent size (the x4 tiny: 16, tiny-xl: 8)
    tiny = tiny_pipe.unet.config
    out = [equivalence("tiny", tiny_pipe.unet, tiny.sample_size, tiny.cross_attention_dim)]
    if tiny_xl_pipe is not None:
        out.append(
            equivalence(
                "tiny-xl",
                tiny_xl_pipe.unet,
                tiny_xl_pipe.unet.config.sample_size,
                tiny_xl_pipe.unet.config.cross_attention_dim,
                added=int(tiny_xl_pipe.text_encoder_2.config.projection_dim),
            )
        )
    if sd15:
        import torch
        from _architectures import sd15_unet

        torch.manual_seed(0)
        # 32x32 latents (256 px): 1,024-token self-attention, so the query chunks are used
        out.append(equivalence("sd15-arch", sd15_unet(), 32, 768))
    return out
