"""Train the built-in tiny Stable Diffusion from code, on scenes this module draws itself.

The model is Stable Diffusion's architecture at toy size (diffusers ``AutoencoderKL`` and
``UNet2DConditionModel``, a transformers ``CLIPTextModel`` with a CLIP BPE tokenizer), trained in
two phases on the synthetic world of ``workers.tiny.scenes``:

1. the VAE learns to reconstruct 64 px scenes (MSE plus a small KL term); each of its levels
   after the first halves the side (SD's four make an image 8x its latent);
2. the UNet and the text encoder learn to denoise the VAE's latents of those scenes, conditioned
   on their prompts (v-prediction on SD 1.x's 1000-step scaled-linear schedule rescaled to zero
   terminal SNR, 10% empty prompts so classifier-free guidance works, an EMA of the weights).

Everything is drawn from one seed, so a run is deterministic given its seed, torch version,
thread count and CPU; the prompts of ``workers.tiny.judge.HELD_OUT_PROMPTS`` are never trained on.
The result is a diffusers folder written with ``save_pretrained`` plus ``training.json``
(configuration, losses, times). ``scripts/train_tiny.py`` is the command line.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.models.families import vae_scale
from workers.models.schedulers import TERMINAL_ALPHA_BAR
from workers.tiny.scenes import COLOURS, COUNT_WORDS, POSITIONS, SHAPES, render, sample_scene

PROMPT_DROPOUT = 0.1  # share of training prompts replaced by "" (the unconditional prompt)
# v-prediction (as SD 2.x): with epsilon prediction a wrong colour costs almost nothing at the
# noise levels where only the prompt can tell it (the error is scaled by the signal-to-noise
# ratio), and 3,000 steps did not learn colours (held-out adherence 0.40, background at chance).
PREDICTION = "v_prediction"


@dataclass
class TrainConfig:
    seed: int = 20261201
    threads: int = 2
    size: int = 64
    vae_steps: int = 1000
    vae_batch: int = 64
    vae_crop: int = 32  # the VAE is convolutional (no mid-block attention): train on crops
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    # Keep the VAE checkpoint whose reconstructions the judge reads best (0: keep the last):
    # its fidelity moves around during training, and it bounds what the UNet can draw.
    vae_select_every: int = 500
    vae_select_scenes: int = 120
    scenes: int = 30_000  # distinct rendered scenes the UNet phase draws from
    unet_steps: int = 4000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    text_lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.998
    # Min-SNR loss weights (None: the plain v-prediction loss, every noise level weighted 1)
    min_snr_gamma: float | None = None
    # Zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    # Flawed"): SD 1.x's schedule leaves a trace of the image at t=999, so the model learns to
    # read the layout from its input noise, and at inference (pure noise) the seed, not the
    # prompt, places the shapes. Rescaled betas make the last step pure noise (needs v-prediction
    # and the plain loss: min-SNR weights are 0 there).
    zero_terminal_snr: bool = True
    # Divide every step's signal-to-noise ratio by this (1: SD 1.x's schedule as it is).
    # Resolution-dependent shift (Hoogeboom et al. 2023, "simple diffusion"; SD 3's shifted
    # schedule): a latent with 4x the pixels of another keeps a scene's layout readable at 4x
    # less SNR, so at the same schedule it spends fewer of its steps where only the prompt can
    # place a shape. A 16x16 latent (x4 VAE) shifted by 4 sees the 8x8 one's layout noise.
    # Training and every sampler then use the shifted betas (``trained_betas`` in the folder).
    snr_shift: float = 4.0
    # One VAE level per entry; each level after the first halves the side, so three levels make
    # a 16x16 latent of a 64 px image (x4) and four make SD's x8. The built-in model is x4: at
    # x8 a medium shape is 2.4 latent pixels and its UNet drew every shape as a blob.
    vae_channels: tuple[int, ...] = (32, 32, 64)
    vae_layers: int = 1  # resnet layers per VAE block
    latent_channels: int = 8
    # Four levels (16, 8, 4, 2 px at 64 px): the 2x2 level, where every cell touches the
    # border, is what lets the UNet place a shape from pure noise (three levels did not).
    unet_channels: tuple[int, ...] = (32, 64, 64, 64)
    # Which UNet levels have cross-attention to the prompt (None: every level, as SD 1.x has in
    # three of its four); a level without it is SD's plain DownBlock2D / UpBlock2D. Not the
    # finest: attention over 256 positions cost 1.8x a training step.
    unet_attention: tuple[bool, ...] | None = (False, True, True, True)
    # Resnet (+ attention) layers per UNet down block: one number, or one per level.
    unet_layers: int | tuple[int, ...] = (1, 2, 2, 2)
    text_hidden: int = 32

    def __post_init__(self) -> None:
        if self.unet_attention is not None and len(self.unet_attention) != len(self.unet_channels):
            raise ValueError(
                f"unet_attention has {len(self.unet_attention)} entries and unet_channels "
                f"{len(self.unet_channels)}: give one true/false per UNet level"
            )
        if isinstance(self.unet_layers, tuple) and len(self.unet_layers) != len(self.unet_channels):
            raise ValueError(
                f"unet_layers has {len(self.unet_layers)} entries and unet_channels "
                f"{len(self.unet_channels)}: give one number, or one per UNet level"
            )
        if self.size % self.vae_factor:
            raise ValueError(
                f"size {self.size} is not a multiple of the VAE's factor {self.vae_factor}"
            )
        if self.snr_shift <= 0:
            raise ValueError(f"snr_shift must be positive, not {self.snr_shift}")
        if self.zero_terminal_snr and self.min_snr_gamma is not None:
            raise ValueError(
                "zero_terminal_snr needs min_snr_gamma=None: min-SNR weights are 0 at the last "
                "step, where the model must learn to draw from the prompt alone (min-SNR "
                "weights need zero_terminal_snr=false)"
            )

    @property
    def vae_factor(self) -> int:
        """Image side / latent side."""
        return vae_scale({"block_out_channels": self.vae_channels})

    def scaled(self, factor: float) -> TrainConfig:
        """The same run with its step counts and scene count scaled (for tests and smoke runs)."""
        c = copy.copy(self)
        c.vae_steps = max(1, round(self.vae_steps * factor))
        c.unet_steps = max(1, round(self.unet_steps * factor))
        c.scenes = max(64, round(self.scenes * factor))
        c.warmup = max(1, round(self.warmup * factor))
        return c


@dataclass
class TrainReport:
    config: dict[str, Any]
    vae_losses: list[tuple[int, float]] = field(default_factory=list)
    vae_checkpoints: list[tuple[int, float]] = field(default_factory=list)
    unet_losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    latent_scaling_factor: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Tokenizer: CLIP's byte-level BPE with merges learned on this world's words


def vocabulary_words() -> list[str]:
    """Every word a scene prompt can use, in a fixed order."""
    words: list[str] = []
    for phrase in (
        *COUNT_WORDS.values(),
        "one small large",
        *COLOURS,
        *SHAPES,
        *(s + "s" for s in SHAPES),
        *POSITIONS,
        "on a an background",
    ):
        for w in phrase.split():
            if w not in words:
                words.append(w)
    return words


def learn_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that make each word one token (CLIP style: the last symbol ends with
    ``</w>``). Classic BPE: merge the most frequent adjacent pair, ties broken by the pair's
    text, until no word has two symbols; applying the merges in this order to these words
    gives single tokens, and other words still tokenize (into pieces)."""
    from workers.tiny import byte_unicode_table

    table = byte_unicode_table()
    split = [
        [table[b] for b in w.encode("utf-8")[:-1]] + [table[w.encode("utf-8")[-1]] + "</w>"]
        for w in words
    ]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in split:
            for pair in itertools.pairwise(symbols):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for i, symbols in enumerate(split):
            out: list[str] = []
            j = 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    out.append(joined)
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            split[i] = out


# ---------------------------------------------------------------------------------------------
# Data


def held_out_prompts() -> frozenset[str]:
    from workers.tiny.judge import HELD_OUT_PROMPTS

    return frozenset(HELD_OUT_PROMPTS)


def draw_scenes(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, list[str]]:
    """``n`` rendered scenes (uint8, N x 3 x size x size) and their prompts, none held out."""
    held_out = held_out_prompts()
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    prompts: list[str] = []
    while len(prompts) < n:
        scene = sample_scene(rng)
        if scene.prompt in held_out:
            continue
        images[len(prompts)] = np.asarray(render(scene, rng, size, size)).transpose(2, 0, 1)
        prompts.append(scene.prompt)
    return images, prompts


def random_crops(images: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """A ``crop`` x ``crop`` window of each image, placed at random."""
    n, c, h, w = images.shape
    if crop >= min(h, w):
        return images
    out = np.empty((n, c, crop, crop), dtype=images.dtype)
    for i in range(n):
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        out[i] = images[i, :, y : y + crop, x : x + crop]
    return out


def to_tensor(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(images).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------
# Models


def build_components(config: TrainConfig, tokenizer_dir: Path) -> dict[str, Any]:
    """Fresh VAE, UNet, text encoder and tokenizer (weights from ``config.seed``)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from workers.tiny import write_clip_vocabulary

    vocab_size = write_clip_vocabulary(tokenizer_dir, learn_merges(vocabulary_words()))
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {vocab_size}")
    torch.manual_seed(config.seed)
    latent = config.size // config.vae_factor
    attention = config.unet_attention or (True,) * len(config.unet_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
        block_out_channels=config.vae_channels,
        layers_per_block=config.vae_layers,
        latent_channels=config.latent_channels,
        norm_num_groups=8,
        sample_size=config.size,
        mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers,
        # Heads of 16 channels: 8 heads of 4 channels learned to read the prompt too slowly.
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)
        ),
        cross_attention_dim=config.text_hidden,
        attention_head_dim=tuple(c // 16 for c in config.unet_channels),
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=config.text_hidden,
            intermediate_size=config.text_hidden * 4,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            projection_dim=config.text_hidden,
        )
    )
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer}


# SD 1.x's training schedule, which every scheduler here starts from
_SD_SCHEDULE: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def shifted_betas(zero_terminal_snr: bool, snr_shift: float) -> list[float] | None:
    """SD 1.x's betas (rescaled to zero terminal SNR when asked) with every step's SNR divided
    by ``snr_shift``; None for a shift of 1 (the named schedule is then the whole story).
    alpha_bar' = alpha_bar / (alpha_bar + shift (1 - alpha_bar)) is the SNR/shift step, and a
    zero terminal SNR ends at alpha_bar = TERMINAL_ALPHA_BAR, as diffusers' samplers with the rescale
    option end it (0 makes NaNs at t=999)."""
    if snr_shift == 1:
        return None
    from diffusers import DDPMScheduler

    base: Any = DDPMScheduler(**_SD_SCHEDULE, rescale_betas_zero_snr=zero_terminal_snr)
    alpha_bar = base.alphas_cumprod.double()
    shifted = alpha_bar / (alpha_bar + snr_shift * (1 - alpha_bar))
    if zero_terminal_snr:
        shifted[-1] = TERMINAL_ALPHA_BAR
    previous = shifted.new_ones(len(shifted))
    previous[1:] = shifted[:-1]
    return (1 - shifted / previous).tolist()


def _schedule(zero_terminal_snr: bool, betas: list[float] | None) -> dict[str, Any]:
    """Scheduler keyword arguments for the training schedule (shifted betas, when given, carry
    the zero terminal SNR themselves)."""
    if betas is None:
        return {**_SD_SCHEDULE, "rescale_betas_zero_snr": zero_terminal_snr}
    return {**_SD_SCHEDULE, "trained_betas": betas, "rescale_betas_zero_snr": False}


def noise_scheduler(zero_terminal_snr: bool = False, betas: list[float] | None = None) -> Any:
    from diffusers import DPMSolverMultistepScheduler

    # The inference default, with the model's training schedule (the pipeline's own config).
    scheduler: Any = DPMSolverMultistepScheduler(
        **_schedule(zero_terminal_snr, betas),
        steps_offset=1,
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type=PREDICTION,
    )
    # What SD 1.x's scheduler config says for the other samplers built from this one: DDIM
    # must not clip its estimate of the clean latents to [-1, 1] (latents exceed it).
    scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False)
    return scheduler


# ---------------------------------------------------------------------------------------------
# Training


Progress = Callable[[str, int, int, float], None]  # phase, step, total, loss


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def reconstruction_adherence(vae: Any, images: np.ndarray, prompts: Sequence[str]) -> float:
    """The judge's adherence on the VAE's round trips of ``images`` (their prompts given): how
    much of each scene survives encoding and decoding, the ceiling of what the UNet can draw."""
    import torch
    from PIL import Image

    from workers.tiny.judge import adherence, judge

    with torch.no_grad():
        decoded = vae.decode(vae.encode(to_tensor(images)).latent_dist.mean).sample
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    verdicts = [
        judge(Image.fromarray(p), prompt) for p, prompt in zip(pixels, prompts, strict=True)
    ]
    return adherence(v for v in verdicts if v is not None)


def train_vae(
    vae: Any, config: TrainConfig, rng: np.random.Generator, progress: Progress
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """Train the VAE; returns the MSE per step and, when ``config.vae_select_every`` is set, the
    reconstruction adherence of each checkpoint scored (the best one is kept in ``vae``)."""
    import torch

    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    losses: list[tuple[int, float]] = []
    scores: list[tuple[int, float]] = []
    best: tuple[float, dict[str, Any]] | None = None
    if config.vae_select_every:
        # Validation scenes from their own stream, so selecting leaves the training draws as
        # they are (and never the held-out prompts)
        val_images, val_prompts = draw_scenes(
            np.random.default_rng(config.seed + 1), config.vae_select_scenes, config.size
        )
    vae.train()
    for step in range(config.vae_steps):
        images, _ = draw_scenes(rng, config.vae_batch, config.size)
        x = to_tensor(random_crops(images, config.vae_crop, rng))
        for g in opt.param_groups:
            g["lr"] = config.vae_lr * lr_factor(step, config.vae_steps, config.warmup)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        # L1 beside MSE keeps edges sharp: the judge reads shapes from them.
        loss = mse + (recon - x).abs().mean() + config.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append((step, float(mse.detach())))
        progress("vae", step, config.vae_steps, losses[-1][1])
        done = step + 1
        if config.vae_select_every and (
            done % config.vae_select_every == 0 or done == config.vae_steps
        ):
            vae.eval()
            score = reconstruction_adherence(vae, val_images, val_prompts)
            vae.train()
            scores.append((done, score))
            if best is None or score > best[0]:
                best = (score, copy.deepcopy(vae.state_dict()))
    if best is not None:
        vae.load_state_dict(best[1])
    vae.eval()
    return losses, scores


def encode_scenes(vae: Any, images: np.ndarray, batch: int = 256) -> tuple[Any, Any]:
    """The VAE posterior's mean and std of every scene."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            dist = vae.encode(to_tensor(images[i : i + batch])).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def _min_snr_weights(scheduler: Any, timesteps: Any, gamma: float) -> Any:
    """Min-SNR loss weights (Hang et al. 2023) for a v-prediction loss: min(SNR, gamma) / (SNR + 1)."""
    import torch

    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / (snr + 1)


def train_unet(
    components: dict[str, Any],
    config: TrainConfig,
    rng: np.random.Generator,
    progress: Progress,
) -> tuple[Any, Any, list[tuple[int, float]], float]:
    """Train UNet + text encoder; returns their EMA copies, the losses and the latent scale."""
    import torch
    from diffusers import DDPMScheduler

    vae, unet = components["vae"], components["unet"]
    text_encoder, tokenizer = components["text_encoder"], components["tokenizer"]
    images, prompts = draw_scenes(rng, config.scenes, config.size)
    means, stds = encode_scenes(vae, images)
    scale = float(1.0 / means.std())
    token_ids = tokenizer(
        [*prompts, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    empty = token_ids[-1:]
    token_ids = token_ids[:-1]
    ddpm: Any = DDPMScheduler(
        **_schedule(
            config.zero_terminal_snr, shifted_betas(config.zero_terminal_snr, config.snr_shift)
        ),
        prediction_type=PREDICTION,
    )
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    for p in (*ema_unet.parameters(), *ema_text.parameters()):
        p.requires_grad_(False)
    opt = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "lr": config.unet_lr, "base": config.unet_lr},
            {
                "params": list(text_encoder.parameters()),
                "lr": config.text_lr,
                "base": config.text_lr,
            },
        ],
        weight_decay=1e-2,
    )
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    unet.train()
    text_encoder.train()
    losses: list[tuple[int, float]] = []
    for step in range(config.unet_steps):
        idx = torch.from_numpy(rng.integers(0, len(prompts), config.unet_batch))
        ids = token_ids[idx].clone()
        drop = torch.from_numpy(rng.random(config.unet_batch) < PROMPT_DROPOUT)
        ids[drop] = empty
        eps_latent = torch.randn(means[idx].shape, generator=generator)
        latents = (means[idx] + stds[idx] * eps_latent) * scale
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, 1000, (config.unet_batch,), generator=generator)
        noisy = ddpm.add_noise(latents, noise, t)
        for g in opt.param_groups:
            g["lr"] = g["base"] * lr_factor(step, config.unet_steps, config.warmup)
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        target = ddpm.get_velocity(latents, noise, t)
        per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        if config.min_snr_gamma is None:
            loss = per_sample.mean()
        else:
            loss = (per_sample * _min_snr_weights(ddpm, t, config.min_snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), *text_encoder.parameters()], 1.0)
        opt.step()
        ema_update(((unet, ema_unet), (text_encoder, ema_text)), step, config.ema_decay)
        losses.append((step, float(per_sample.detach().mean())))
        progress("unet", step, config.unet_steps, losses[-1][1])
    return ema_unet.eval(), ema_text.eval(), losses, scale


def ema_update(pairs: Iterable[tuple[Any, Any]], step: int, ema_decay: float) -> None:
    """Move each (model, EMA copy) pair's copy toward the model, by ``ema_decay`` (ramped in
    over the first steps)."""
    import torch

    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for model, ema in pairs:
            for p, q in zip(model.parameters(), ema.parameters(), strict=True):
                q.mul_(decay).add_(p.detach(), alpha=1 - decay)


def environment(threads: int) -> dict[str, Any]:
    """What a training run's bytes depend on besides its configuration (``training.json``)."""
    import diffusers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "threads": threads,
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def assemble(
    components: dict[str, Any], zero_terminal_snr: bool, betas: list[float] | None = None
) -> Any:
    """A ``StableDiffusionPipeline`` of ``build_components``'s parts (or trained ones)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        unet=components["unet"],
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        scheduler=noise_scheduler(zero_terminal_snr, betas),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def train(destination: Path, config: TrainConfig, progress: Progress | None = None) -> TrainReport:
    """Train the whole model and save it as a diffusers folder at ``destination``."""
    import torch

    from workers.tiny import write_clip_vocabulary

    torch.set_num_threads(config.threads)
    report = TrainReport(config=asdict(config))
    report.environment = environment(config.threads)
    rng = np.random.default_rng(config.seed)
    tok_dir = destination / "tokenizer"
    components = build_components(config, tok_dir)
    say: Progress = progress or (lambda *_: None)
    t0 = time.perf_counter()
    report.vae_losses, report.vae_checkpoints = train_vae(components["vae"], config, rng, say)
    t1 = time.perf_counter()
    unet, text_encoder, report.unet_losses, scale = train_unet(components, config, rng, say)
    t2 = time.perf_counter()
    report.seconds = {"vae": t1 - t0, "unet": t2 - t1, "total": t2 - t0}
    report.latent_scaling_factor = scale
    components["vae"].register_to_config(scaling_factor=scale)
    pipe = assemble(
        {**components, "unet": unet, "text_encoder": text_encoder},
        config.zero_terminal_snr,
        shifted_betas(config.zero_terminal_snr, config.snr_shift),
    )
    pipe.save_pretrained(destination, safe_serialization=True)
    write_clip_vocabulary(tok_dir, learn_merges(vocabulary_words()))
    (destination / "training.json").write_text(json.dumps(summary(report), indent=1) + "\n")
    return report


def windows(losses: Iterable[tuple[int, float]], size: int = 100) -> list[list[float]]:
    """Losses as [last step, mean] over consecutive windows of ``size`` steps."""
    rows: list[list[float]] = []
    chunk: list[float] = []
    last = 0
    for step, value in losses:
        chunk.append(value)
        last = step
        if len(chunk) == size:
            rows.append([last, round(sum(chunk) / len(chunk), 5)])
            chunk = []
    if chunk:
        rows.append([last, round(sum(chunk) / len(chunk), 5)])
    return rows


def summary(report: TrainReport) -> dict[str, Any]:
    """What ``training.json`` records: the configuration, environment, times, and the losses
    as means over windows of 100 steps (the full curves are long)."""

    return {
        "config": report.config,
        "environment": report.environment,
        "seconds": {k: round(v, 1) for k, v in report.seconds.items()},
        "latent_scaling_factor": report.latent_scaling_factor,
        "vae_mse_per_100_steps": windows(report.vae_losses),
        "vae_checkpoint_adherence": [[step, round(v, 4)] for step, v in report.vae_checkpoints],
        "unet_loss_per_100_steps": windows(report.unet_losses),
    }
