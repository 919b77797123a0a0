"""Scheduler names a manifest may use, how to build each from a model's config, and the
names A1111 gives them in image metadata.

A sampler applies to the diffusion families (a UNet predicting noise or velocity), to the
flow-matching ones (SD3, FLUX), or to both. ``dpmpp_2m`` is the house sampler on both: on a flow
model it is DPM-Solver++ with flow sigmas (``prediction_type="flow_prediction"``,
``use_flow_sigmas``) and the model's own shift, resolution-dependent where the model's scheduler
config says so (FLUX's ``use_dynamic_shifting``); ``flow_euler`` is the model's own
FlowMatchEulerDiscrete, as its pipeline ships it.

Only the builder imports diffusers, so the manifest validator can use the names cheaply.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any

from workers.models.families import DIFFUSION, FAMILIES, FLOW

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
    kinds: tuple[str, ...] = (DIFFUSION,)  # the kinds of model it samples (families.Family.kind)


# On a flow model the schedule is the model's shifted linear one (Forge's "Simple").
FLOW_A1111_SCHEDULE = "Simple"

SCHEDULERS: dict[str, SchedulerInfo] = {
    # DPM-Solver++ (2M): reaches in ~20 steps what PNDM needs 50 for.
    "dpmpp_2m": SchedulerInfo(
        "DPMSolverMultistepScheduler",
        (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("use_karras_sigmas", False)),
        "DPM++ 2M",
        kinds=(DIFFUSION, FLOW),
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
    # A flow model's own sampler: FlowMatch Euler with the model's shift (A1111/Forge: Euler on
    # the "Simple" schedule).
    "flow_euler": SchedulerInfo(
        "FlowMatchEulerDiscreteScheduler", (), "Euler", FLOW_A1111_SCHEDULE, kinds=(FLOW,)
    ),
    # UniPC (bh2) with flow sigmas, as diffusers runs it for flow-prediction models.
    "unipc": SchedulerInfo(
        "UniPCMultistepScheduler",
        (("solver_order", 2), ("solver_type", "bh2")),
        "UniPC",
        kinds=(FLOW,),
    ),
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


def schedulers_for(kind: str) -> tuple[str, ...]:
    """The scheduler names that sample a model of ``kind`` (DIFFUSION or FLOW)."""
    return tuple(name for name, info in SCHEDULERS.items() if kind in info.kinds)


DIFFUSION_SCHEDULERS = schedulers_for(DIFFUSION)
FLOW_SCHEDULERS = schedulers_for(FLOW)


def family_problem(family: str, scheduler: str) -> str | None:
    """Why ``scheduler`` cannot sample a model of ``family`` (a families.FAMILIES name), or
    None when it can."""
    known = FAMILIES.get(family)
    info = SCHEDULERS.get(scheduler)
    if known is None or info is None or known.kind in info.kinds:
        return None
    what = "a flow-matching" if known.kind == FLOW else "a diffusion (noise-predicting)"
    return (
        f"scheduler {scheduler} does not apply to {known.title} (family {family}, "
        f"{what} model); its schedulers are {', '.join(schedulers_for(known.kind))}"
    )


def model_kind(model: str) -> str:
    """DIFFUSION or FLOW for a manifest's model value, as far as this machine can tell its
    family (DIFFUSION when it cannot)."""
    from workers.models import family_name

    family = FAMILIES.get(family_name(model) or "")
    return family.kind if family is not None else DIFFUSION


def sampler_problem(model: str, scheduler: str) -> str | None:
    """Why ``scheduler`` cannot sample ``model`` (a manifest's model value), as far as this
    machine can tell its family (``workers.models.family_name``), or None."""
    from workers.models import family_name

    family = family_name(model)
    return family_problem(family, scheduler) if family is not None else None


# A flow model's latents go to its transformer in 2x2 patches: its image sides are multiples
# of twice the VAE's scale of 8.
FLOW_SIZE_MULTIPLE = 16


def size_problem(model: str, width: int, height: int) -> str | None:
    """Why a ``width`` x ``height`` image cannot be made by ``model`` (its family's pipeline
    would change the size), or None."""
    from workers.models import family_name

    family = FAMILIES.get(family_name(model) or "")
    if family is None or family.kind != FLOW:
        return None
    if width % FLOW_SIZE_MULTIPLE == 0 and height % FLOW_SIZE_MULTIPLE == 0:
        return None
    return (
        f"{width}x{height} is not a size {family.title} (family {family.name}) makes: its "
        f"width and height must be multiples of {FLOW_SIZE_MULTIPLE} (2x2 patches of 8x latents)"
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


# The keys of a flow model's scheduler config that say how its timesteps are shifted; the
# pipelines read the dynamic ones from whatever scheduler they are given.
_SHIFT_KEYS = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")


def build_flow_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """A fresh scheduler of the named kind for a flow-matching model whose own (FlowMatch
    Euler) scheduler config is ``base_config``: the same shift, static or dynamic.

    DPM-Solver++ takes a dynamic shift as ``mu`` (``flow_shift = exp(mu)``, FlowMatch Euler's
    exponential time shift) and refuses a ``mu`` when not set for it, while the FLUX pipelines
    pass one always: so it is always built dynamic, and a model with a static shift ``s`` gets
    base and max shift ``ln(s)``, which makes every image size's ``mu`` ``ln(s)``, the static
    shift (Klein's pipeline computes its ``mu`` itself, from the image size and steps; Z-Image's
    from the image size and the shift keys of the scheduler it is given, so ``ln(s)`` too). Both
    take the linear ``sigmas`` Z-Image's pipeline passes (``_flow_sampler_class``).
    """
    import diffusers

    info = SCHEDULERS[name]
    if name == "flow_euler":
        return diffusers.FlowMatchEulerDiscreteScheduler.from_config(base_config)
    cls = getattr(diffusers, info.cls)
    shift = float(base_config.get("shift") or 1.0)
    dynamic = bool(base_config.get("use_dynamic_shifting"))
    shifts: dict[str, Any] = {k: base_config[k] for k in _SHIFT_KEYS if k in base_config}
    options: dict[str, Any] = {
        "num_train_timesteps": int(base_config.get("num_train_timesteps") or 1000),
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": shift,
        **dict(info.options),
    }
    if cls is diffusers.DPMSolverMultistepScheduler:
        if not dynamic:
            shifts.update(base_shift=math.log(shift), max_shift=math.log(shift))
        options.update(use_dynamic_shifting=True, time_shift_type="exponential")
    else:  # UniPC takes mu only when dynamic, and ignores one passed otherwise
        options.update(use_dynamic_shifting=dynamic)
    scheduler = _flow_sampler_class(name).from_config(options)
    scheduler.register_to_config(**shifts)
    return scheduler


def linear_flow_sigmas(steps: int) -> list[float]:
    """The unshifted flow sigmas a flow pipeline starts from, 1 down to 1/steps (Z-Image's
    pipeline passes them to its scheduler as ``sigmas``; FLUX's drop them for a scheduler with
    flow sigmas of its own)."""
    return [1.0 - i / steps for i in range(steps)]


@functools.cache
def _flow_sampler_class(name: str) -> Any:
    """DPM-Solver++ or UniPC with flow sigmas, taking the ``sigmas`` a pipeline passes.

    Z-Image's pipeline passes its scheduler the linear sigmas (``linear_flow_sigmas``, as a
    list) whatever the scheduler, for it to shift, where FLUX's drop them for a scheduler with
    flow sigmas of its own. diffusers' DPMSolverMultistepScheduler has no ``sigmas`` argument
    (the pipeline refuses it), and UniPC takes them as a numpy array only (a list fails in its
    shift). DPM-Solver++'s own flow sigmas are the same linear spacing (to the 1/1000 they
    start short of 1), shifted by ``mu`` as FlowMatch Euler shifts the pipeline's: it takes
    those sigmas as the step count and refuses others (it follows no custom schedule). UniPC
    takes any, as an array, and shifts them as FlowMatch Euler does.
    """
    import diffusers
    import numpy as np

    base = getattr(diffusers, SCHEDULERS[name].cls)

    class FlowSampler(base):  # type: ignore[misc, valid-type]
        def set_timesteps(
            self,
            num_inference_steps: int | None = None,
            device: Any = None,
            sigmas: Any = None,
            mu: float | None = None,
        ) -> None:
            if sigmas is not None and base is diffusers.DPMSolverMultistepScheduler:
                steps = len(sigmas)
                linear = linear_flow_sigmas(steps)
                if not all(
                    math.isclose(float(a), b, abs_tol=1e-6)
                    for a, b in zip(sigmas, linear, strict=True)
                ):
                    raise ValueError(
                        "DPM-Solver++ with flow sigmas takes only the linear flow sigmas "
                        "(1 down to 1/steps), not a custom schedule"
                    )
                super().set_timesteps(steps, device, mu=mu)
            elif sigmas is not None:
                sigmas = np.asarray(sigmas, dtype=np.float64)
                super().set_timesteps(device=device, sigmas=sigmas, mu=mu)
            else:
                super().set_timesteps(num_inference_steps, device, mu=mu)

    # A module-level name, so that pickle and copy find the class as they find diffusers' own.
    FlowSampler.__name__ = FlowSampler.__qualname__ = f"Flow{base.__name__}"
    globals()[FlowSampler.__name__] = FlowSampler
    return FlowSampler


def build_scheduler(name: str, base_config: dict[str, Any], kind: str = DIFFUSION) -> Any:
    """A fresh scheduler of the named kind, with the model's training noise schedule (the
    flow shift of a flow model: ``build_flow_scheduler``)."""
    import diffusers

    info = SCHEDULERS[name]
    if kind not in info.kinds:  # the manifest refuses it where it can tell the family
        from contract.errors import JobInputError

        raise JobInputError(
            f"scheduler {name} does not apply to a {kind} model; its schedulers are "
            + ", ".join(schedulers_for(kind))
        )
    if kind == FLOW:
        return build_flow_scheduler(name, base_config)
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
