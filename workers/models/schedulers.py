"""Scheduler names a manifest may use, how to build each from a model's config, and the
names A1111 gives them in image metadata.

Only the builder imports diffusers, so the manifest validator can use the names cheaply.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

# Where diffusers' samplers with ``rescale_betas_zero_snr`` end a zero-terminal-SNR schedule:
# alpha_bar at t=999 kept short of 0 (0 makes NaNs there). Betas written out by hand for such a
# schedule (PNDM's, a shifted one's) end at the same value.
TERMINAL_ALPHA_BAR = 2**-24

# Karras et al.'s sigma_max (EDM): above it a latent is noise whatever the schedule says. A
# zero-terminal-SNR schedule ends at sigma 4,096 (alpha_bar TERMINAL_ALPHA_BAR), and Karras
# spacing built from there spends about half of its steps above 80, where nothing is drawn: the
# spacing is built from this instead, and the first step still starts from pure noise.
KARRAS_SIGMA_MAX = 80.0

# The fewest steps at which a sampler draws on a built-in model, where it needs more than a
# manifest's usual 20: PLMS (pndm) diverges at 20-30 steps on the tiny model's shifted,
# zero-terminal-SNR schedule at the guidance scales manifests use (its fourth-order linear
# multistep extrapolates the guided prediction over steps that are long in log-SNR; at guidance
# 3 or less it draws at 20). At 40 it draws as DPM-Solver++ does at 10, at 50 nearly as the
# others do at 20 (benchmarks/schedulers.py measures 20, 40 and 50).
MIN_STEPS: dict[tuple[str, str], int] = {("tiny", "pndm"): 40}


@dataclass(frozen=True)
class SchedulerInfo:
    cls: str
    options: tuple[tuple[str, Any], ...]
    a1111_sampler: str
    a1111_schedule: str | None = None


SCHEDULERS: dict[str, SchedulerInfo] = {
    # DPM-Solver++ (2M): reaches in ~20 steps what PNDM needs 50 for.
    "dpmpp_2m": SchedulerInfo(
        "DPMSolverMultistepScheduler",
        (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("use_karras_sigmas", False)),
        "DPM++ 2M",
    ),
    "dpmpp_2m_karras": SchedulerInfo(
        "DPMSolverMultistepScheduler",
        (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("use_karras_sigmas", True)),
        "DPM++ 2M",
        "Karras",
    ),
    # Stable Diffusion's PNDM config skips the Runge-Kutta warm-up: that is PLMS.
    "pndm": SchedulerInfo("PNDMScheduler", (("skip_prk_steps", True),), "PLMS"),
    "euler": SchedulerInfo("EulerDiscreteScheduler", (), "Euler"),
    "euler_a": SchedulerInfo("EulerAncestralDiscreteScheduler", (), "Euler a"),
    "ddim": SchedulerInfo("DDIMScheduler", (), "DDIM"),
}
SCHEDULER_NAMES = tuple(SCHEDULERS)

# Keys that one scheduler class leaves in a saved config and another would carry along.
_BASE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "clip_sample",
    "set_alpha_to_one",
    "rescale_betas_zero_snr",
)


def steps_problem(model: str, scheduler: str, steps: int) -> str | None:
    """Why ``scheduler`` at ``steps`` steps would not draw on ``model``, or None."""
    least = MIN_STEPS.get((model, scheduler))
    if least is None or steps >= least:
        return None
    return (
        f"{scheduler} at {steps} steps draws noise, not pictures, on the built-in {model} model "
        f"(PLMS diverges on its zero-terminal-SNR schedule below {least} steps): give it steps "
        f"{least} or more, or use dpmpp_2m"
    )


def build_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """A fresh scheduler of the named kind, with the model's training noise schedule."""
    import diffusers

    info = SCHEDULERS[name]
    cls = getattr(diffusers, info.cls)
    config = {k: v for k, v in base_config.items() if k in _BASE_KEYS}
    config.setdefault("steps_offset", 1)
    config.update(dict(info.options))
    if config.get("rescale_betas_zero_snr") and not _accepts(cls, "rescale_betas_zero_snr"):
        # A model trained on zero-terminal-SNR betas needs them in every sampler; one without
        # the option (PNDM) gets the rescaled betas themselves, the last one kept short of 1
        # so that alpha_bar ends at TERMINAL_ALPHA_BAR, as the samplers with the option do (0 makes NaNs
        # at t=999, where linspace and trailing spacings start).
        betas = diffusers.DDPMScheduler.from_config(config).betas.double()
        alpha_bar = (1 - betas).cumprod(0)
        betas[-1] = 1 - TERMINAL_ALPHA_BAR / alpha_bar[-2]
        config["trained_betas"] = betas.tolist()
        del config["rescale_betas_zero_snr"]
    scheduler = cls.from_config(config)
    if config.get("use_karras_sigmas") and _sigma_max(scheduler) > KARRAS_SIGMA_MAX:
        # diffusers builds Karras spacing from ``config.sigma_max`` where one is given
        config["sigma_max"] = KARRAS_SIGMA_MAX
        scheduler = cls.from_config(config)
    return scheduler


def _sigma_max(scheduler: Any) -> float:
    """The sigma of the schedule's last training step (its purest noise)."""
    alpha_bar = float(scheduler.alphas_cumprod[-1])
    return float("inf") if alpha_bar <= 0 else ((1 - alpha_bar) / alpha_bar) ** 0.5


def _accepts(cls: Any, option: str) -> bool:
    return option in inspect.signature(cls.__init__).parameters
