"""The flow-matching families through the real task: the built-in tiny SD3, FLUX.1 (dev layout),
FLUX.2 Klein and Z-Image, each with its samplers, guidance as the family means it, the metadata that
says so, micro-batches bit-identical to lone runs on the CPU, and a uniform palettized variant
of the transformer."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.job import GenerationRequest
from tests.conftest import image_job as job
from tests.conftest import png_pixels as pixels
from tests.helpers import cli_for, write
from workers.metadata import read_png_metadata
from workers.models.schedulers import FLOW_SCHEDULERS
from workers.task import PipelineCache, run_job

FLOW_MODELS = ("tiny-sd3", "tiny-flux", "tiny-flux2", "tiny-zimage")


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache(device="cpu", threads=1)


@pytest.mark.parametrize(
    ("model", "pipeline", "guidance", "calls_per_step"),
    [
        ("tiny-sd3", "StableDiffusion3Pipeline", "cfg", 2),
        ("tiny-flux", "FluxPipeline", "distilled", 1),
        ("tiny-flux2", "Flux2KleinPipeline", "cfg", 2),
        ("tiny-zimage", "ZImagePipeline", "cfg", 2),
    ],
)
def test_each_flow_model_runs_through_the_task_same_seed_same_pixels(
    cache: PipelineCache, model: str, pipeline: str, guidance: str, calls_per_step: int
) -> None:
    backend, _ = cache.get(model)
    assert type(backend.pipe).__name__ == pipeline
    assert backend.family == model and backend.dtype == "fp32"
    first = run_job(job(model), cache)
    image = pixels(first.png)
    assert image.shape == (64, 64, 3) and image.std() > 0
    assert np.array_equal(image, pixels(run_job(job(model), cache).png))
    assert not np.array_equal(image, pixels(run_job(job(model, seed=8), cache).png))
    assert not np.array_equal(image, pixels(run_job(job(model, prompt="a cat"), cache).png))
    assert first.result["unet_evaluations"] == 4 * calls_per_step

    meta = read_png_metadata(first.png)
    versions = meta["meta"]["run"]["versions"]
    assert versions["model_family"] == model and versions["guidance"] == guidance
    params = meta["parameters"]
    assert "Sampler: DPM++ 2M" in params and "Schedule type: Simple" in params
    if guidance == "distilled":  # FLUX.1 dev: as Forge writes it
        assert "CFG scale: 1," in params and "Distilled CFG Scale: 4" in params
    else:
        assert "CFG scale: 4," in params and "Distilled" not in params


@pytest.mark.slow
@pytest.mark.parametrize("model", FLOW_MODELS)
def test_guidance_and_the_negative_prompt_change_what_cfg_models_draw(
    cache: PipelineCache, model: str
) -> None:
    base = pixels(run_job(job(model), cache).png)
    other_scale = pixels(run_job(job(model, guidance_scale=2.0), cache).png)
    other_negative = pixels(run_job(job(model, negative_prompt="noise"), cache).png)
    # FLUX.1 dev takes the scale as an input and has no negative prompt
    assert not np.array_equal(base, other_scale)
    assert np.array_equal(base, other_negative) == (model == "tiny-flux")


@pytest.mark.slow
@pytest.mark.parametrize("model", FLOW_MODELS)
def test_every_flow_sampler_draws_something_of_its_own(cache: PipelineCache, model: str) -> None:
    images = {
        name: pixels(run_job(job(model, scheduler=name), cache).png) for name in FLOW_SCHEDULERS
    }
    assert all(image.std() > 0 for image in images.values())
    assert len({image.tobytes() for image in images.values()}) == len(FLOW_SCHEDULERS)
    meta = read_png_metadata(run_job(job(model, scheduler="flow_euler"), cache).png)
    assert "Sampler: Euler, Schedule type: Simple" in meta["parameters"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "scheduler"),
    [
        ("tiny-sd3", "dpmpp_2m"),
        ("tiny-flux", "flow_euler"),
        ("tiny-flux2", "unipc"),
        ("tiny-zimage", "dpmpp_2m"),
    ],
)
def test_a_flow_batch_makes_each_image_its_lone_run_makes(
    cache: PipelineCache, model: str, scheduler: str
) -> None:
    backend, _ = cache.get(model)
    requests = [
        GenerationRequest(
            prompt=f"shape {i}",
            negative_prompt="blurry" if i % 2 else "",
            seed=40 + i,
            steps=4,
            guidance_scale=4.0,
            width=64,
            height=64,
            scheduler=scheduler,
        )
        for i in range(3)
    ]
    alone = [np.asarray(backend.generate(r).image).tobytes() for r in requests]
    together = backend.generate_batch(requests)
    assert [np.asarray(g.image).tobytes() for g in together] == alone
    assert len(set(alone)) == 3
    assert all(g.batch_size == 3 for g in together)


@pytest.mark.slow
@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_a_z_image_batch_runs_its_list_taking_transformer_image_by_image(
    cache: PipelineCache, guidance_scale: float
) -> None:
    """Z-Image's transformer takes a list of latents and a list of captions (of different
    lengths), a tensor per row, and the timesteps as a tensor: each image's call gets exactly
    the rows its lone run's call gets (its prompt and its negative with guidance, in that
    order; its prompt alone without), and the batch's images are the lone ones."""
    import torch

    backend, _ = cache.get("tiny-zimage")
    requests = [
        GenerationRequest(
            prompt="a red circle" + " on a blue background" * i,
            negative_prompt="blurry" if i == 1 else "",
            seed=60 + i,
            steps=3,
            guidance_scale=guidance_scale,
            width=64,
            height=64,
            scheduler="flow_euler",
        )
        for i in range(3)
    ]
    transformer = backend.pipe.transformer
    calls: list[tuple[int, list[int], list[float]]] = []

    def spy(x: Any, t: Any, cap_feats: Any, **kwargs: Any) -> Any:
        assert isinstance(x, list) and isinstance(cap_feats, list) and torch.is_tensor(t)
        calls.append((len(x), [len(c) for c in cap_feats], t.tolist()))
        return type(transformer).forward(transformer, x, t, cap_feats, **kwargs)

    def lone_calls(request: GenerationRequest) -> list[Any]:
        calls.clear()
        transformer.forward = spy
        try:
            image = np.asarray(backend.generate(request).image).tobytes()
        finally:
            del transformer.forward
        return [image, list(calls)]

    alone = [lone_calls(r) for r in requests]
    calls.clear()
    transformer.forward = spy  # the batch's per-image split calls it, and removes it after
    try:
        together = backend.generate_batch(requests)
    finally:
        transformer.__dict__.pop("forward", None)
    rows = 2 if guidance_scale > 1 else 1
    assert all(n == rows for n, _, _ in calls) and len(calls) == 3 * 3
    # step by step, image by image: each call is the lone run's call
    assert calls == [alone[i][1][step] for step in range(3) for i in range(3)]
    assert len({tuple(lengths) for _, lengths, _ in calls}) == 3  # the captions differ
    assert [np.asarray(g.image).tobytes() for g in together] == [a[0] for a in alone]


@pytest.mark.slow
def test_tiny_zimage_makes_what_its_own_pipeline_makes_at_the_scale_less_one(
    cache: PipelineCache,
) -> None:
    """A job at guidance_scale w is ZImagePipeline's own call at w - 1 with the job's prompt
    and negative prompt, bit for bit: the encoding, guidance, scheduler (its own FlowMatch
    Euler) and decode are the pipeline's. At w <= 1 there is no guidance (the negative prompt
    does nothing)."""
    import torch

    backend, _ = cache.get("tiny-zimage")
    pipe = backend.pipe
    request = GenerationRequest(
        prompt="a red circle",
        negative_prompt="blurry",
        seed=11,
        steps=4,
        guidance_scale=4.0,
        width=64,
        height=64,
        scheduler="flow_euler",
    )

    def own(guidance: float) -> bytes:
        out = pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            height=64,
            width=64,
            num_inference_steps=4,
            guidance_scale=guidance,
            max_sequence_length=32,
            generator=torch.Generator("cpu").manual_seed(11),
        )
        return np.asarray(out.images[0]).tobytes()

    def ours(**kw: Any) -> bytes:
        return np.asarray(backend.generate(dataclasses.replace(request, **kw)).image).tobytes()

    assert ours() == own(3.0)
    assert ours(guidance_scale=1.0) == own(0.0) == ours(guidance_scale=0.5)
    assert ours(guidance_scale=1.0) == ours(guidance_scale=1.0, negative_prompt="noise")


@pytest.mark.slow
def test_a_uniform_variant_palettizes_the_transformer(cache: PipelineCache) -> None:
    full = run_job(job("tiny-flux"), cache)
    eight = run_job(job("tiny-flux", quantization="8bit"), cache)
    assert cache.current.family == "tiny-flux"
    transformer = cache.current.pipe.transformer
    weights = [m.weight for m in transformer.modules() if type(m).__name__ == "Linear"]
    big = [w for w in weights if w.numel() > 2048]  # coremltools' weight_threshold
    assert big and all(len(np.unique(w.detach().numpy())) <= 256 for w in big)
    a, b = pixels(full.png), pixels(eight.png)
    assert not np.array_equal(a, b)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 20  # close, not equal


# -- the CLI: run, reproduce and submit's check, as a user types them -------------------------


@pytest.mark.slow
def test_a_manifest_of_every_family_runs_and_each_image_reproduces(
    tmp_path: Path, model_cache: Path
) -> None:
    cli = cli_for(tmp_path, model_cache, in_process=True)
    write(
        tmp_path / "jobs.csv",
        "prompt,model,seed,steps,scheduler,guidance_scale,output_name\n"
        "a red fox,tiny,5,3,,,sd\n"
        "a red fox,tiny-xl,5,3,,,xl\n"
        "a red fox,tiny-sd3,5,3,dpmpp_2m,5,sd3\n"
        "a red fox,tiny-flux,5,3,flow_euler,3.5,flux\n"
        "a red fox,tiny-flux2,5,3,unipc,4,flux2\n"
        "a red fox,tiny-zimage,5,3,dpmpp_2m,4,zimage\n",
    )
    run = cli("run", "jobs.csv", timeout=600)
    assert "6/6 succeeded, 0 failed" in run.stdout, run.stdout
    pngs = {p.stem.split("-", 1)[1]: p for p in (tmp_path / "output" / "1").glob("*.png")}
    assert set(pngs) == {"sd", "xl", "sd3", "flux", "flux2", "zimage"}, pngs
    for stem in ("sd3", "flux", "flux2", "zimage"):
        meta = read_png_metadata(pngs[stem].read_bytes())
        model = meta["meta"]["job"]["model"]
        assert meta["meta"]["run"]["versions"]["model_family"] == model
        shutil.copy(pngs[stem], tmp_path / f"{stem}.png")
        proc = cli("reproduce", f"{stem}.png", "--compare", timeout=600)
        assert proc.stdout.splitlines()[0] == f"{stem}.png: reproduced, pixels identical"
    flux = read_png_metadata(pngs["flux"].read_bytes())["parameters"]
    assert "Sampler: Euler, Schedule type: Simple, CFG scale: 1," in flux
    assert "Distilled CFG Scale: 3.5" in flux


@pytest.mark.slow
def test_submit_refuses_a_sampler_a_flow_model_cannot_use(
    tmp_path: Path, model_cache: Path
) -> None:
    cli = cli_for(tmp_path, model_cache, in_process=True)
    write(tmp_path / "jobs.csv", "prompt,model,scheduler\na fox,tiny-flux,euler_a\n")
    proc = cli("submit", "jobs.csv", check=2)
    assert (
        "jobs.csv:2: column 'scheduler': scheduler euler_a does not apply to the built-in tiny "
        "FLUX.1 (family tiny-flux, a flow-matching model); its schedulers are dpmpp_2m, "
        "flow_euler, unipc (got 'euler_a')"
    ) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_prompt_longer_than_a_text_encoder_reads_is_recorded(cache: PipelineCache) -> None:
    long = "a red circle on a blue background next to " + "a small green square, " * 20
    flux = read_png_metadata(run_job(job("tiny-flux", prompt=long), cache).png)["meta"]
    t5_tokens, kept = flux["prompt_truncated"]["T5"]
    assert kept == 32 and t5_tokens > 32  # the tiny models' T5 reads 32 tokens
    assert flux["prompt_truncated"]["CLIP-L"][1] == 77
    klein = read_png_metadata(run_job(job("tiny-flux2", prompt=long), cache).png)["meta"]
    assert list(klein["prompt_truncated"]) == ["Qwen3"]
    zimage = read_png_metadata(run_job(job("tiny-zimage", prompt=long), cache).png)["meta"]
    qwen_tokens, kept = zimage["prompt_truncated"]["Qwen3"]
    assert list(zimage["prompt_truncated"]) == ["Qwen3"] and kept == 32 < qwen_tokens
    # its chat (thinking on) is shorter than Klein's by the empty <think> block's 4 tokens
    assert klein["prompt_truncated"]["Qwen3"][0] == qwen_tokens + 4
    fits = "a red circle on a blue background next to a small green square"
    short = read_png_metadata(run_job(job("tiny-zimage", prompt=fits), cache).png)["meta"]
    assert "prompt_truncated" not in short
    sd = read_png_metadata(run_job(job("tiny", prompt=long, scheduler="dpmpp_2m"), cache).png)
    assert sd["meta"]["prompt_truncated"]["CLIP"][1] == 77
    short = read_png_metadata(run_job(job("tiny-sd3", prompt="a red circle"), cache).png)
    assert "prompt_truncated" not in short["meta"]
