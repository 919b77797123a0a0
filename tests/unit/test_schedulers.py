from __future__ import annotations

import inspect

import pytest

from workers.schedulers import SCHEDULER_NAMES, build_scheduler

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


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_sets_the_requested_steps(name: str) -> None:
    s = build_scheduler(name, SD_CONFIG)
    s.set_timesteps(20)
    assert len(s.timesteps) in (20, 21)  # PLMS repeats one timestep
    assert "skip_prk_steps" not in s.config or name == "pndm"


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
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
    assert len(s.timesteps) in (20, 21) and int(s.timesteps[0]) == 999
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator) * s.init_noise_sigma
    takes_generator = "generator" in inspect.signature(s.step).parameters
    for t in s.timesteps[:3]:  # the first steps read alpha_bar at t=999
        model_input = s.scale_model_input(sample, t)
        output = torch.randn(model_input.shape, generator=generator)
        extra = {"generator": generator} if takes_generator else {}
        sample = s.step(output, t, sample, **extra).prev_sample
        assert torch.isfinite(sample).all(), (name, int(t))
