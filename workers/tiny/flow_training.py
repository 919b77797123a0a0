"""Train the built-in ``tiny-flow``: Stable Diffusion 3's layout at toy size, trained from code with
the rectified-flow objective on the synthetic scenes of ``workers.tiny.scenes``.

The model is a ``StableDiffusion3Pipeline`` whose parts are the real diffusers/transformers
classes: an MMDiT (``SD3Transformer2DModel``: 2x2 patches, a joint attention over image and text
tokens, RMS-normed queries and keys, SD3's 2-D sine-cosine position embedding), two CLIP text
encoders with projections (their penultimate hidden states side by side are the context, their
projected embeddings the pooled one) and a T5 encoder, the CLIP ones with the built-in ``tiny``'s
byte-level BPE (merges learned on the scene words) and T5 with the project's offline Unigram
tokenizer (``workers.tiny.tokenizers``); SD 3.5's ``FlowMatchEulerDiscreteScheduler`` with a
static shift. The VAE is the built-in ``tiny``'s, trained already (its 8-channel latent, 16x16
at 64 px, is 8x8 tokens of 2x2 patches), reused as it ships, with SD3's ``shift_factor`` = 0 and
its own ``scaling_factor``; only the transformer and the text encoders are trained.

The objective (Esser et al. 2024, "Scaling Rectified Flow Transformers"): a latent ``x0`` and
noise ``e`` make ``x_s = (1 - s) x0 + s e`` at noise level ``s``; the transformer, given ``x_s``,
the timestep ``1000 s`` and the prompt, predicts the velocity ``e - x0`` (mean squared error).
``s`` is drawn logit-normal and then shifted as the inference schedule is (``shift``), so the
noise levels the sampler visits most are the ones trained most; 10% of prompts are replaced by
"" so classifier-free guidance works; the weights kept are an exponential moving average.

Every prompt goes through the pipeline's own ``encode_prompt``, the function a worker calls,
so the model learns exactly the context it is given at inference. Deterministic given seed,
thread count, torch version and CPU (the shipped weights' ``training.json`` records them); the
held-out prompts of ``workers.tiny.judge`` are never trained on. ``scripts/train_tiny.py
--recipe flow`` is the command line.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.tiny.tokenizers import MODEL_MAX_LENGTH
from workers.tiny.training import (
    PROMPT_DROPOUT,
    Progress,
    draw_scenes,
    ema_update,
    encode_scenes,
    environment,
    learn_merges,
    lr_factor,
    vocabulary_words,
    windows,
)

# Tokens of CLIP and of T5 text: every scene prompt fits (12 words at most), and it is the
# offline T5 tokenizer's model_max_length, which the worker's max_sequence_length follows.
TEXT_LENGTH = MODEL_MAX_LENGTH


@dataclass
class FlowTrainConfig:
    seed: int = 20261207
    threads: int = 2
    size: int = 64
    scenes: int = 30_000  # distinct rendered scenes the training draws from
    scale_scenes: int = 1024  # scenes (their own stream) that set the latents' scaling_factor
    steps: int = 4500
    batch: int = 64
    lr: float = 1e-3
    text_lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.998
    # The inference schedule's static shift (SD 3.5's is 3), which training's noise levels
    # follow: s' = shift s / (1 + (shift - 1) s).
    shift: float = 3.0
    # Logit-normal noise levels (SD3's "lognorm(0, 1)"): s = sigmoid(N(mean, std)).
    logit_mean: float = 0.0
    logit_std: float = 1.0
    width: int = 96  # the transformer's width: heads x 16
    layers: int = 5  # joint (MMDiT) blocks
    clip_width: int = 32
    t5_width: int = 64  # also the transformer's joint_attention_dim

    def __post_init__(self) -> None:
        if self.width % 16:
            raise ValueError(f"width {self.width} is not a multiple of 16 (heads of 16)")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, not {self.shift}")
        if self.t5_width < 2 * self.clip_width:
            raise ValueError(
                f"t5_width {self.t5_width} is narrower than the two CLIP encoders side by side "
                f"({2 * self.clip_width}): SD3's pipeline pads CLIP's context to T5's width"
            )

    def scaled(self, factor: float) -> FlowTrainConfig:
        """The same run with its step count and scene count scaled (for tests and smoke runs)."""
        c = copy.copy(self)
        c.steps = max(1, round(self.steps * factor))
        c.scenes = max(64, round(self.scenes * factor))
        c.warmup = max(1, round(self.warmup * factor))
        return c


@dataclass
class FlowTrainReport:
    config: dict[str, Any]
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)


def build_pipeline(config: FlowTrainConfig, destination: Path, vae_folder: Path) -> Any:
    """A ``StableDiffusion3Pipeline`` of fresh text encoders and transformer (weights from
    ``config.seed``), the tokenizers written into ``destination``, and the VAE of
    ``vae_folder``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5EncoderModel,
        T5TokenizerFast,
    )

    from workers.tiny import write_clip_vocabulary
    from workers.tiny.flow import t5_config
    from workers.tiny.tokenizers import check_tokenizer_size, write_t5_tokenizer

    merges = learn_merges(vocabulary_words())
    tokenizers = []
    for sub in ("tokenizer", "tokenizer_2"):
        size = write_clip_vocabulary(destination / sub, merges)
        tokenizer = CLIPTokenizer.from_pretrained(destination / sub, model_max_length=TEXT_LENGTH)
        check_tokenizer_size(tokenizer, size, f"tiny-flow {sub}")
        tokenizers.append(tokenizer)
    t5_size = write_t5_tokenizer(destination / "tokenizer_3")
    tokenizer_3 = T5TokenizerFast.from_pretrained(
        destination / "tokenizer_3", model_max_length=TEXT_LENGTH
    )
    check_tokenizer_size(tokenizer_3, t5_size, "tiny-flow tokenizer_3")

    vae = AutoencoderKL.from_pretrained(vae_folder)
    vae.register_to_config(shift_factor=0.0)
    vae.requires_grad_(False)
    latent_side = config.size // (2 ** (len(vae.config.block_out_channels) - 1))

    torch.manual_seed(config.seed)
    vocab = len(tokenizers[0])
    clip_config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=config.clip_width,
        intermediate_size=config.clip_width * 4,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TEXT_LENGTH,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
        projection_dim=config.clip_width,
    )
    text_encoder = CLIPTextModelWithProjection(clip_config)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config)
    text_encoder_3 = T5EncoderModel(t5_config(t5_size, config.t5_width, d_ff=config.t5_width * 2))
    transformer = SD3Transformer2DModel(
        sample_size=latent_side,
        patch_size=2,
        in_channels=vae.config.latent_channels,
        out_channels=vae.config.latent_channels,
        num_layers=config.layers,
        attention_head_dim=16,
        num_attention_heads=config.width // 16,
        joint_attention_dim=config.t5_width,
        caption_projection_dim=config.width,
        pooled_projection_dim=2 * config.clip_width,
        pos_embed_max_size=2 * latent_side // 2,  # up to twice the native side (128 px)
        qk_norm="rms_norm",
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=config.shift),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizers[0],
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizers[1],
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def noise_levels(config: FlowTrainConfig, generator: Any, n: int) -> Any:
    """``n`` training noise levels in (0, 1): logit-normal, then shifted as inference's are."""
    import torch

    u = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(n, generator=generator))
    return config.shift * u / (1 + (config.shift - 1) * u)


def train_transformer(
    pipe: Any, config: FlowTrainConfig, rng: np.random.Generator, progress: Progress
) -> tuple[dict[str, Any], list[tuple[int, float]]]:
    """Train the transformer and the three text encoders; returns their EMA copies by pipeline
    attribute, and the loss per step."""
    import torch

    trained = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
    images, prompts = draw_scenes(rng, config.scenes, config.size)
    means, stds = encode_scenes(pipe.vae, images)
    del images
    vae_config = pipe.vae.config
    models = {name: getattr(pipe, name) for name in trained}
    emas = {name: copy.deepcopy(m) for name, m in models.items()}
    for ema in emas.values():
        ema.requires_grad_(False)
    text_params = [p for name in trained[1:] for p in models[name].parameters()]
    transformer_params = list(models["transformer"].parameters())
    opt = torch.optim.AdamW(
        [
            {"params": transformer_params, "lr": config.lr, "base": config.lr},
            {"params": text_params, "lr": config.text_lr, "base": config.text_lr},
        ],
        weight_decay=1e-2,
    )
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    for m in models.values():
        m.train()
    losses: list[tuple[int, float]] = []
    for step in range(config.steps):
        idx = rng.integers(0, len(prompts), config.batch)
        drop = rng.random(config.batch) < PROMPT_DROPOUT
        batch_prompts = ["" if d else prompts[i] for i, d in zip(idx, drop, strict=True)]
        index = torch.from_numpy(idx)
        latents = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        # What the pipeline's decode undoes: latents / scaling_factor + shift_factor
        x0 = (latents - vae_config.shift_factor) * vae_config.scaling_factor
        noise = torch.randn(x0.shape, generator=generator)
        sigma = noise_levels(config, generator, config.batch)
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        for g in opt.param_groups:
            g["lr"] = g["base"] * lr_factor(step, config.steps, config.warmup)
        context, _, pooled, _ = pipe.encode_prompt(
            prompt=batch_prompts,
            prompt_2=None,
            prompt_3=None,
            device="cpu",
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=TEXT_LENGTH,
        )
        pred = models["transformer"](
            hidden_states=noisy,
            timestep=sigma * 1000,
            encoder_hidden_states=context,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        loss = ((pred - (noise - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*transformer_params, *text_params], 1.0)
        opt.step()
        ema_update(((m, emas[name]) for name, m in models.items()), step, config.ema_decay)
        losses.append((step, float(loss.detach())))
        progress("transformer", step, config.steps, losses[-1][1])
    return {name: ema.eval() for name, ema in emas.items()}, losses


def latent_scale(vae: Any, config: FlowTrainConfig, rng: np.random.Generator) -> float:
    """1 / the std of the VAE's latent means over scenes from their own stream (SD3's recipe
    for ``scaling_factor``: unit-variance latents), leaving the training draws as they are."""
    images, _ = draw_scenes(rng, config.scale_scenes, config.size)
    means, _ = encode_scenes(vae, images)
    return float(1.0 / means.std())


def train_flow(
    destination: Path,
    config: FlowTrainConfig,
    progress: Progress | None = None,
    vae_folder: Path | None = None,
) -> FlowTrainReport:
    """Train the model and save it as a diffusers folder at ``destination``."""
    import torch

    from workers.tiny import SHIPPED_TINY, write_clip_vocabulary
    from workers.tiny.tokenizers import write_t5_tokenizer

    torch.set_num_threads(config.threads)
    report = FlowTrainReport(config=asdict(config))
    report.environment = environment(config.threads)
    rng = np.random.default_rng(config.seed)
    pipe = build_pipeline(config, destination, vae_folder or SHIPPED_TINY / "vae")
    pipe.vae.register_to_config(
        scaling_factor=latent_scale(pipe.vae, config, np.random.default_rng(config.seed + 1))
    )
    t0 = time.perf_counter()
    emas, report.losses = train_transformer(pipe, config, rng, progress or (lambda *_: None))
    report.seconds = {"transformer": time.perf_counter() - t0}
    pipe.register_modules(**emas)
    pipe.save_pretrained(destination, safe_serialization=True)
    # save_pretrained writes the CLIP tokenizers' tokenizer.json only, and the T5 one its own
    # way: keep the plain files the build wrote (as ``workers.tiny.flow`` does).
    merges = learn_merges(vocabulary_words())
    for sub in ("tokenizer", "tokenizer_2"):
        write_clip_vocabulary(destination / sub, merges)
    write_t5_tokenizer(destination / "tokenizer_3")
    (destination / "training.json").write_text(json.dumps(summary(report), indent=1) + "\n")
    return report


def summary(report: FlowTrainReport) -> dict[str, Any]:
    """What ``training.json`` records: configuration, environment, time, the losses as means
    over windows of 100 steps."""
    return {
        "recipe": "flow",
        "config": report.config,
        "environment": report.environment,
        "seconds": {k: round(v, 1) for k, v in report.seconds.items()},
        "loss_per_100_steps": windows(report.losses),
    }
