"""The flow-matching families (SD 3/3.5, FLUX.1, FLUX.2 Klein, Z-Image) told from a folder's
configs, what a manifest's guidance means for each, and the samplers that apply to them: configs
and schedulers only, no weights."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from orchestrator.manifest import ManifestError, parse_manifest
from orchestrator.preflight import model_problem
from workers.backends import flow as flow_family
from workers.models import families, family_name, native_size
from workers.models.schedulers import (
    FLOW_SCHEDULERS,
    build_scheduler,
    family_problem,
    linear_flow_sigmas,
)

FLUX_VAE = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 16}
DEV_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
SD35_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
}
# Tongyi-MAI/Z-Image-Turbo's configs (the base Z-Image's transformer config is the same).
ZIMAGE_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "use_dynamic_shifting": False,
    "shift": 3.0,
}
ZIMAGE_TRANSFORMER = {
    "_class_name": "ZImageTransformer2DModel",
    "all_f_patch_size": [1],
    "all_patch_size": [2],
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
    "cap_feat_dim": 2560,
    "dim": 3840,
    "in_channels": 16,
    "n_heads": 30,
    "n_kv_heads": 30,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "norm_eps": 1e-05,
    "qk_norm": True,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
}
ZIMAGE_INDEX = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen3Model"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "ZImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def flow_folder(
    path: Path,
    class_name: str,
    transformer: dict[str, Any],
    *,
    index: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
) -> Path:
    """A flow model folder's config files (no weights)."""
    path.mkdir(parents=True)
    model_index = {"_class_name": class_name, "_diffusers_version": "0.42.1", **(index or {})}
    (path / "model_index.json").write_text(json.dumps(model_index))
    for part, name, config in (
        ("transformer", "config.json", transformer),
        ("scheduler", "scheduler_config.json", scheduler or DEV_SCHEDULER),
        ("vae", "config.json", FLUX_VAE),
    ):
        (path / part).mkdir()
        (path / part / name).write_text(json.dumps(config))
    return path


def sd35_medium(path: Path) -> Path:
    return flow_folder(
        path,
        "StableDiffusion3Pipeline",
        {"joint_attention_dim": 4096, "sample_size": 128, "patch_size": 2},
        scheduler=SD35_SCHEDULER,
    )


def flux_dev(path: Path) -> Path:
    return flow_folder(path, "FluxPipeline", {"joint_attention_dim": 4096, "guidance_embeds": True})


def flux_schnell(path: Path) -> Path:
    return flow_folder(
        path, "FluxPipeline", {"joint_attention_dim": 4096, "guidance_embeds": False}
    )


def klein_4b(path: Path) -> Path:
    return flow_folder(
        path,
        "Flux2KleinPipeline",
        {"joint_attention_dim": 7680},
        index={"is_distilled": True},
    )


def zimage_turbo(path: Path) -> Path:
    return flow_folder(
        path,
        "ZImagePipeline",
        ZIMAGE_TRANSFORMER,
        index=ZIMAGE_INDEX,
        scheduler=ZIMAGE_SCHEDULER,
    )


@pytest.mark.parametrize(
    ("make", "family", "guidance", "side"),
    [
        (sd35_medium, "sd3", families.CFG, 1024),
        (flux_dev, "flux1", families.DISTILLED, 1024),
        (flux_schnell, "flux1", families.NO_GUIDANCE, 1024),
        (klein_4b, "flux2-klein", families.NO_GUIDANCE, 1024),
        # nothing in its configs says the Turbo is distilled: guidance stays CFG (<= 1: none)
        (zimage_turbo, "zimage", families.CFG, 1024),
    ],
)
def test_flow_families_are_told_from_their_configs(
    tmp_path: Path, make: Any, family: str, guidance: str, side: int
) -> None:
    folder = make(tmp_path / "m")
    info = families.detect_folder(folder)
    assert info.family.name == family
    assert info.family.kind == families.FLOW
    assert info.guidance == guidance
    assert info.prediction_type == "flow_prediction"
    assert info.native_size == (side, side)
    assert native_size(str(folder)) == (side, side)
    assert family_name(str(folder)) == family
    assert model_problem(str(folder)) is None


def test_a_klein_that_is_not_step_distilled_runs_true_guidance(tmp_path: Path) -> None:
    folder = flow_folder(tmp_path / "k", "Flux2KleinPipeline", {"joint_attention_dim": 7680})
    assert families.detect_folder(folder).guidance == families.CFG


def test_sd3_native_size_is_its_transformers_sample_size(tmp_path: Path) -> None:
    folder = flow_folder(
        tmp_path / "s",
        "StableDiffusion3Pipeline",
        {"joint_attention_dim": 4096, "sample_size": 64},
        scheduler=SD35_SCHEDULER,
    )
    assert families.detect_folder(folder).native_size == (512, 512)


def test_toy_widths_are_the_builtin_flow_families(tmp_path: Path) -> None:
    for class_name, toy in (
        ("StableDiffusion3Pipeline", "tiny-sd3"),
        ("FluxPipeline", "tiny-flux"),
        ("Flux2KleinPipeline", "tiny-flux2"),
    ):
        folder = flow_folder(tmp_path / toy, class_name, {"joint_attention_dim": 32})
        assert families.detect_folder(folder).family.name == toy
    # Z-Image's caption width is cap_feat_dim (it has no joint_attention_dim)
    toy = flow_folder(
        tmp_path / "tiny-zimage", "ZImagePipeline", {**ZIMAGE_TRANSFORMER, "cap_feat_dim": 16}
    )
    info = families.detect_folder(toy)
    assert info.family.name == "tiny-zimage" and info.native_size == (64, 64)
    assert info.guidance == families.CFG
    wide = flow_folder(tmp_path / "z", "ZImagePipeline", {"joint_attention_dim": 32})
    assert families.detect_folder(wide).family.name == "zimage"  # not Z-Image's width key


def test_z_image_is_a_supported_flow_family_and_named_in_the_refusal() -> None:
    assert "ZImagePipeline" in families.FLOW_PIPELINES
    assert families.FAMILIES["zimage"].kind == families.FLOW
    assert "Z-Image (ZImagePipeline)" in families.SUPPORTED
    assert "Z-Image (ZImagePipeline)" in families.refusal("QwenImagePipeline")
    with pytest.raises(families.UnsupportedModel):
        families.classify("ZImageImg2ImgPipeline", None, None, None)


def test_builtin_flow_models_are_named_and_64_px() -> None:
    for name in ("tiny-sd3", "tiny-flux", "tiny-flux2", "tiny-zimage"):
        assert family_name(name) == name
        assert native_size(name) == (64, 64)
        assert model_problem(name) is None


def test_only_the_samplers_of_a_models_kind_apply() -> None:
    assert FLOW_SCHEDULERS == ("dpmpp_2m", "flow_euler", "unipc")
    assert family_problem("flux1", "dpmpp_2m") is None
    assert family_problem("tiny", "dpmpp_2m") is None
    problem = family_problem("flux1", "euler_a")
    assert problem is not None
    assert "euler_a" in problem and "FLUX.1" in problem and "flux1" in problem
    assert "dpmpp_2m, flow_euler, unipc" in problem
    problem = family_problem("sdxl", "flow_euler")
    assert problem is not None and "dpmpp_2m_karras" in problem and "SDXL" in problem


def test_a_manifest_row_with_a_sampler_its_model_cannot_use_is_refused_at_submit(
    tmp_path: Path,
) -> None:
    dev = flux_dev(tmp_path / "dev")
    with pytest.raises(ManifestError) as info:
        parse_manifest(f"prompt,model,scheduler\na cat,{dev},euler\n", "m.csv")
    (issue,) = info.value.issues
    text = str(issue)
    assert text.startswith("m.csv:2: column 'scheduler': scheduler euler does not apply")
    assert "dpmpp_2m, flow_euler, unipc" in text
    with pytest.raises(ManifestError) as info:
        parse_manifest("prompt,model,scheduler\na cat,tiny,flow_euler\n", "m.csv")
    assert "flow_euler does not apply to the built-in tiny" in str(info.value.issues[0])
    with pytest.raises(ManifestError) as info:
        parse_manifest("prompt,model,scheduler\na cat,tiny-zimage,dpmpp_2m_karras\n", "m.csv")
    text = str(info.value.issues[0])
    assert "does not apply to the built-in tiny Z-Image (family tiny-zimage" in text
    z = zimage_turbo(tmp_path / "z")
    m = parse_manifest(f"prompt,model,scheduler\na,{z},unipc\nb,tiny-zimage,flow_euler\n", "m.csv")
    assert [(j.scheduler, j.width) for j in m.jobs] == [("unipc", 1024), ("flow_euler", 64)]
    m = parse_manifest(
        f"prompt,model,scheduler\na,{dev},flow_euler\nb,{dev},dpmpp_2m\nc,tiny,euler\n", "m.csv"
    )
    assert [(j.scheduler, j.width) for j in m.jobs] == [
        ("flow_euler", 1024),
        ("dpmpp_2m", 1024),
        ("euler", 64),
    ]


def test_dpm_solver_on_a_dynamic_shift_model_matches_its_own_euler_schedule() -> None:
    """DPM-Solver++ with flow sigmas steps through the same shifted sigmas FLUX's own
    FlowMatch Euler does, at any image size's mu (to the 1/1000 the flow sigmas start short
    of 1)."""
    import numpy as np

    for mu in (0.5, 0.8, 1.15):
        euler = build_scheduler("flow_euler", DEV_SCHEDULER, families.FLOW)
        dpm = build_scheduler("dpmpp_2m", DEV_SCHEDULER, families.FLOW)
        assert dpm.config.prediction_type == "flow_prediction" and dpm.config.use_flow_sigmas
        assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
        euler.set_timesteps(sigmas=np.linspace(1.0, 1 / 12, 12), mu=mu)
        dpm.set_timesteps(12, mu=mu)
        assert len(dpm.timesteps) == 12
        assert np.allclose(euler.sigmas.numpy(), dpm.sigmas.numpy(), atol=2e-3)


def test_dpm_solver_on_a_static_shift_model_keeps_its_shift() -> None:
    """SD 3.5's shift is 3.0 whatever the size: DPM-Solver++ is built dynamic (FLUX's
    pipelines pass a mu always) with base and max shift ln(3), so every size's mu is ln 3."""
    dpm = build_scheduler("dpmpp_2m", SD35_SCHEDULER, families.FLOW)
    assert math.isclose(dpm.config.base_shift, math.log(3.0))
    assert math.isclose(dpm.config.max_shift, math.log(3.0))
    dpm.set_timesteps(10, mu=dpm.config.base_shift)
    assert math.isclose(dpm.config.flow_shift, 3.0)
    sigma = 1 - 1 / 1000  # the first flow sigma before the shift
    assert math.isclose(float(dpm.sigmas[0]), 3 * sigma / (1 + 2 * sigma), rel_tol=1e-5)


@pytest.mark.parametrize("name", FLOW_SCHEDULERS)
def test_every_flow_sampler_takes_the_sigmas_and_mu_z_images_pipeline_passes(name: str) -> None:
    """ZImagePipeline always hands its scheduler the linear sigmas (a list, 1 down to 1/steps)
    and a mu from the image size and the given scheduler's shift keys (its own
    retrieve_timesteps and calculate_shift, called here as it calls them): each sampler takes
    them, steps the requested count, and lands on the shifted schedule FlowMatch Euler takes
    from them (DPM-Solver++ and UniPC to the 1/1000 their flow sigmas start short of 1)."""
    import numpy as np
    from diffusers.pipelines.z_image.pipeline_z_image import (
        calculate_shift,
        get_default_z_image_sigmas,
        retrieve_timesteps,
    )

    steps, seq_len = 8, (1024 // 16) ** 2
    assert np.allclose(get_default_z_image_sigmas(steps), linear_flow_sigmas(steps))
    euler = build_scheduler("flow_euler", ZIMAGE_SCHEDULER, families.FLOW)
    s = build_scheduler(name, ZIMAGE_SCHEDULER, families.FLOW)

    def run(scheduler: Any) -> Any:
        config = scheduler.config
        mu = calculate_shift(
            seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        sigmas = get_default_z_image_sigmas(steps)
        timesteps, n = retrieve_timesteps(scheduler, steps, "cpu", sigmas=sigmas, mu=mu)
        assert n == steps and len(timesteps) == steps
        return scheduler.sigmas.numpy()

    expected = run(euler)
    # Z-Image-Turbo's static shift 3 (no dynamic shifting), whatever the image size
    assert np.isclose(expected[1], 3 * 0.875 / (1 + 2 * 0.875))
    assert np.allclose(run(s), expected, atol=2e-3)


def test_dpm_solver_refuses_a_custom_schedule_it_cannot_follow() -> None:
    dpm = build_scheduler("dpmpp_2m", ZIMAGE_SCHEDULER, families.FLOW)
    with pytest.raises(ValueError, match="only the linear flow sigmas"):
        dpm.set_timesteps(sigmas=[1.0, 0.5, 0.1], mu=math.log(3.0))
    dpm.set_timesteps(sigmas=linear_flow_sigmas(4), mu=math.log(3.0))
    assert len(dpm.timesteps) == 4


def test_a_z_image_jobs_guidance_goes_to_its_pipeline_less_one() -> None:
    """Z-Image's pipeline guides as pos + g * (pos - neg), on at g > 0: the usual scale w is
    g + 1, so a job's w goes in as w - 1, and w <= 1 is no guidance, as for every CFG
    family."""
    info = families.classify("ZImagePipeline", None, None, None, ZIMAGE_TRANSFORMER)
    for scale, guided, g in ((4.0, True, 3.0), (1.5, True, 0.5), (1.0, False, 0.0)):
        assert flow_family.uses_cfg(info, scale) is guided
        options = flow_family.call_options(info, scale, 512)
        assert options == {"max_sequence_length": 512, "guidance_scale": g}
    assert flow_family.call_options(info, 0.0, 512)["guidance_scale"] == 0.0
    assert flow_family.stacked_halves(info, True) == 2  # [prompts..., negatives...], one call
    assert flow_family.stacked_halves(info, False) == 1
    assert flow_family.MAX_SEQUENCE_LENGTH["ZImagePipeline"] == 512


@pytest.mark.parametrize("name", FLOW_SCHEDULERS)
def test_every_flow_sampler_sets_the_requested_steps(name: str) -> None:
    s = build_scheduler(name, DEV_SCHEDULER, families.FLOW)
    s.set_timesteps(num_inference_steps=8, mu=0.8)
    assert len(s.timesteps) == 8


def test_a_sampler_of_the_wrong_kind_is_a_job_input_error_at_the_worker() -> None:
    from contract.errors import JobInputError

    with pytest.raises(JobInputError, match="euler_a does not apply to a flow model"):
        build_scheduler("euler_a", DEV_SCHEDULER, families.FLOW)
    with pytest.raises(JobInputError, match="flow_euler does not apply to a diffusion model"):
        build_scheduler("flow_euler", {"num_train_timesteps": 1000}, families.DIFFUSION)


def test_a_flow_model_takes_sizes_in_multiples_of_16(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest("prompt,model,width,height\na,tiny-flux,72,64\n", "m.csv")
    (issue,) = info.value.issues
    assert str(issue).startswith("m.csv:2: column 'width': 72x64 is not a size the built-in tiny")
    assert "multiples of 16" in str(issue)
    with pytest.raises(ManifestError) as info:  # Z-Image's pipeline raises on these
        parse_manifest("prompt,model,width,height\na,tiny-zimage,64,120\n", "m.csv")
    assert "tiny Z-Image" in str(info.value.issues[0])
    m = parse_manifest("prompt,model,width,height\na,tiny-flux,80,96\nb,tiny,72,64\n", "m.csv")
    assert [(j.width, j.height) for j in m.jobs] == [(80, 96), (72, 64)]


def test_the_pro_preset_samples_a_flow_model_with_its_own_sampler() -> None:
    m = parse_manifest("prompt,model,preset\na,tiny-flux,pro\nb,tiny,pro\n", "m.csv")
    assert [(j.model, j.scheduler, j.steps) for j in m.jobs] == [
        ("tiny-flux", "flow_euler", 50),
        ("tiny", "pndm", 50),
    ]
    from orchestrator.manifest import Defaults

    flag = Defaults().with_preset("pro")  # `--preset pro`
    m = parse_manifest("prompt,model\na,tiny-flux\nb,tiny\n", "m.csv", defaults=flag)
    assert [j.scheduler for j in m.jobs] == ["flow_euler", "pndm"]
