"""Device tuning a user switches on per worker: ``--compile``, ``--channels-last``,
``--low-memory``. Each is recorded with the attempt (``attempts.tuning``) and in the PNG (A1111
``Tuning:`` and our JSON), and ``reproduce`` applies what an image records: any of them may
change the pixels, so none is on by default.

- ``compile``: ``torch.compile`` of the UNet (a flow model's transformer), CUDA only (on the CPU the inductor's compile takes
  minutes per shape and seldom pays for 20 steps; on MPS it is not supported well enough). The
  first image of each shape pays the compile.
- ``channels_last``: the UNet's weights and activations in NHWC, which cuDNN's convolutions
  prefer.
- ``low_memory``: attention computed a slice of heads at a time and the VAE decoding in tiles:
  what lets SDXL fit a 16 GB Mac or a 1024 px image fit a small GPU, for some speed. For the
  flow-matching families (SD3, FLUX, Z-Image): on a CUDA GPU, model CPU offload (each component
  moved to the GPU only while it runs: FLUX.1's 24 GB transformer the most at a time) and the
  VAE in tiles; on a Mac the VAE in tiles only (its memory is one pool: offloading saves none of
  it; a Mac short of memory runs a compressed variant, FLUX.1's transformer at 4.5 bits 6.7 GB).
- ``fused_batches``: on the CPU, a batch's UNet evaluations as one call (on CUDA and MPS they
  always are). Without it each image of a CPU batch is byte-identical to its lone run; with it
  small models run several times faster (benchmarks/throughput.py), and each image differs
  from its lone run by up to a level or so in a few pixels (other kernels for other batch
  sizes), so ``reproduce`` reports a PSNR for a batched image instead of identity.

fp16 on CUDA and MPS (fp32 on the CPU) and PyTorch's SDPA attention are not switches: they
are the default, and the dtype is recorded with every image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_LABELS = {
    "compile": "compile",
    "channels_last": "channels-last",
    "low_memory": "low-memory",
    "fused_batches": "fused-batches",
}


@dataclass(frozen=True)
class Tuning:
    compile: bool = False
    channels_last: bool = False
    low_memory: bool = False
    fused_batches: bool = False

    @property
    def label(self) -> str:
        """As recorded: the switches that are on, comma-separated ("" for none)."""
        return ",".join(text for name, text in _LABELS.items() if getattr(self, name))

    @classmethod
    def parse(cls, label: str | None) -> Tuning:
        """The tuning a recorded label names (unknown names are ignored: a newer worker's)."""
        on = {part.strip() for part in (label or "").split(",")}
        return cls(**{name: text in on for name, text in _LABELS.items()})

    def problem(self, device: str) -> str | None:
        """Why this tuning cannot run on ``device`` (None when it can)."""
        if self.compile and device != "cuda":
            return f"--compile needs a CUDA device, not {device}"
        return None

    def for_device(self, device: str) -> Tuning:
        """This tuning less what ``device`` cannot do (reproducing a CUDA image elsewhere)."""
        return self if device == "cuda" else dataclasses.replace(self, compile=False)


def apply(pipe: Any, tuning: Tuning, device: str = "cpu") -> None:
    """Switch ``tuning`` on in a loaded diffusers pipeline that runs on ``device``."""
    import torch

    unet = getattr(pipe, "unet", None)  # None: a flow model's transformer denoises
    if tuning.channels_last and unet is not None:  # a transformer has no conv layout to change
        unet.to(memory_format=torch.channels_last)
    if tuning.low_memory:
        if unet is not None:
            pipe.enable_attention_slicing()
        elif device == "cuda":
            # the flow pipelines have no attention slicing: their components (text encoders,
            # transformer, VAE) wait in the CPU's memory and go to the GPU in turn (accelerate's
            # hooks); on MPS the memory is the Mac's one pool, so moving them saves nothing
            pipe.enable_model_cpu_offload(device=torch.device(device))
        pipe.vae.enable_tiling()
    if tuning.compile:
        if unet is not None:
            pipe.unet = torch.compile(unet, fullgraph=False)
        else:
            pipe.transformer = torch.compile(pipe.transformer, fullgraph=False)
