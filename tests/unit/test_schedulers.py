from __future__ import annotations

import inspect

import pytest

from workers.models.schedulers import (
    DIFFUSION_SCHEDULERS,
    KARRAS_SIGMA_MAX,
    TERMINAL_ALPHA_BAR,
    build_scheduler,
    steps_problem,
)
from workers.tiny import SHIPPED_TINY

SD_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def test_dpmpp_2m_is_dpm_solver_plus_plus_order_2() -> None:
    s = build_scheduler("dpmpp_2m", SD_CONFIG)
    assert type(s).__name__ == "DPMSolverMultistepScheduler"
    assert s.config.algorithm_type == "dpmsolver++"
    assert s.config.solver_order == 2
    assert not s.config.use_karras_sigmas
    assert s.config.beta_schedule == "scaled_linear"


def test_karras_variant_uses_karras_sigmas() -> None:
    s = build_scheduler("dpmpp_2m_karras", SD_CONFIG)
    assert s.config.use_karras_sigmas


@pytest.mark.parametrize("name", DIFFUSION_SCHEDULERS)
def test_every_scheduler_sets_the_requested_steps(name: str) -> None:
    s = build_scheduler(name, SD_CONFIG)
    s.set_timesteps(20)
    assert len(s.timesteps) in (20, 21)  # PLMS repeats one timestep
    assert "skip_prk_steps" not in s.config or name == "pndm"


@pytest.mark.parametrize("name", DIFFUSION_SCHEDULERS)
def test_every_scheduler_keeps_a_zero_terminal_snr_schedule(name: str) -> None:
    """A model trained on rescaled betas (last step pure noise) gets them in every sampler,
    including one without the option (PNDM takes the betas themselves)."""
    import torch
    from diffusers import DDPMScheduler

    config = {
        **SD_CONFIG,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "linspace",  # what our trained models say: the first step is t=999
    }
    expected = DDPMScheduler.from_config(config).alphas_cumprod
    plain = build_scheduler(name, SD_CONFIG).alphas_cumprod
    s = build_scheduler(name, config)
    # The last alpha_bar is 0 (DDIM, which never divides by it) or 2**-24 (the others).
    assert torch.allclose(s.alphas_cumprod[:-1], expected[:-1])
    assert float(s.alphas_cumprod[-1]) < 1e-6 < float(plain[-1])
    s.set_timesteps(20)
    # Karras spacing starts where noise is all there is (test below); the others at t=999
    first = 999 if name != "dpmpp_2m_karras" else int(s.timesteps[0])
    assert len(s.timesteps) in (20, 21) and int(s.timesteps[0]) == first
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator) * s.init_noise_sigma
    takes_generator = "generator" in inspect.signature(s.step).parameters
    for t in s.timesteps[:3]:  # the first steps read alpha_bar at t=999
        model_input = s.scale_model_input(sample, t)
        output = torch.randn(model_input.shape, generator=generator)
        extra = {"generator": generator} if takes_generator else {}
        sample = s.step(output, t, sample, **extra).prev_sample
        assert torch.isfinite(sample).all(), (name, int(t))


def _sigmas(scheduler: object) -> list[float]:
    import torch

    alpha_bar = scheduler.alphas_cumprod  # type: ignore[attr-defined]
    return [
        float(((1 - alpha_bar[int(t)]) / alpha_bar[int(t)]) ** 0.5)
        for t in torch.as_tensor(
            scheduler.timesteps  # type: ignore[attr-defined]
        )
    ]


def test_karras_spacing_of_a_zero_terminal_snr_schedule_starts_at_karras_sigma_max() -> None:
    """Built from the terminal sigma of 4,096, Karras' spacing spent 11 of 20 steps on pure
    noise (sigma above 80) and drew little; it starts at Karras' own sigma_max instead."""
    import json

    config = json.loads((SHIPPED_TINY / "scheduler" / "scheduler_config.json").read_text())
    s = build_scheduler("dpmpp_2m_karras", config)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(TERMINAL_ALPHA_BAR, rel=1e-3)
    s.set_timesteps(20)
    assert float(s.sigmas[0]) == pytest.approx(KARRAS_SIGMA_MAX)
    assert sum(sigma > KARRAS_SIGMA_MAX * 1.05 for sigma in _sigmas(s)) == 0
    # descending, and down to the schedule's smallest sigma, then zero
    assert all(a > b for a, b in zip(s.sigmas[:-1], s.sigmas[1:], strict=False))
    assert float(s.sigmas[-1]) == 0.0
    # the plain DPM-Solver++ on the same model keeps its spacing (from t=999)
    plain = build_scheduler("dpmpp_2m", config)
    plain.set_timesteps(20)
    assert int(plain.timesteps[0]) == 999


def test_karras_spacing_of_an_ordinary_schedule_is_diffusers_own() -> None:
    """SD's schedule ends at sigma 14.6, under Karras' sigma_max: nothing changes there."""
    from diffusers import DPMSolverMultistepScheduler

    s = build_scheduler("dpmpp_2m_karras", SD_CONFIG)
    s.set_timesteps(20)
    own = DPMSolverMultistepScheduler.from_config(
        {**SD_CONFIG, "algorithm_type": "dpmsolver++", "use_karras_sigmas": True}
    )
    own.set_timesteps(20)
    assert s.sigmas.tolist() == own.sigmas.tolist()
    assert float(s.sigmas[0]) == pytest.approx(14.61, abs=0.01)


def test_pndm_below_its_least_steps_on_the_tiny_model_is_a_problem_with_a_way_out() -> None:
    assert steps_problem("tiny", "pndm", 50) is None
    assert steps_problem("tiny", "pndm", 40) is None
    assert steps_problem("/models/sd15", "pndm", 20) is None  # measured on tiny only
    assert steps_problem("tiny", "dpmpp_2m", 20) is None
    assert steps_problem("tiny", "pndm", 20) == (
        "pndm at 20 steps draws noise, not pictures, on the built-in tiny model (PLMS diverges "
        "on its zero-terminal-SNR schedule below 40 steps): give it steps 40 or more, or use "
        "dpmpp_2m"
    )
