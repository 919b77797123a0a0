"""Mixed-bit palettization on the tiny model: analysis, recipes, torch and Core ML variants."""

from __future__ import annotations

import io
import itertools
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.errors import CompressionError
from tests.integration.test_pipeline import JOB as PIPELINE_JOB
from workers.compression.analysis import AnalysisPlan, ProbeConfig, analyze
from workers.compression.palettize import NBITS, kmeans_lut, mean, psnr
from workers.compression.recipes import load_recipe, recipe_for_bits, recipe_for_psnr
from workers.tiny import ensure_tiny_model

pytestmark = pytest.mark.slow
MIN_SIZE = 20_000  # the tiny UNet's 55 larger layers (Apple's 1e5 would leave none)
# two probe prompts, on one thread: the suite's processes share two cores, and the tiny
# UNet's small tensors gain nothing from a second thread that the other process is using
PROBE = ProbeConfig(prompts=ProbeConfig().prompts[:2], threads=1)


def tiny_pipe() -> Any:
    import torch

    from workers.backends.diffusers import load_pipeline, model_source

    return load_pipeline(model_source("tiny"), torch.float32)


def tiny_plan(out: Path) -> AnalysisPlan:
    """The analysis of the tiny model these tests share (two probe prompts, three recipes)."""
    return AnalysisPlan(
        model="tiny",
        out=out,
        min_size=MIN_SIZE,
        num_recipes=3,
        probe=PROBE,
    )


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("analysis") / "tiny.json"
    return out, analyze(tiny_pipe(), tiny_plan(out), resume=False)


def test_kmeans_lut_has_2_to_the_n_entries_and_more_bits_fit_better() -> None:
    w = np.random.default_rng(0).standard_normal(50_000).astype(np.float32)
    quality = []
    for n in NBITS:
        lut, idx = kmeans_lut(w, n)
        assert lut.shape == (2**n,) and lut.dtype == np.float16
        assert idx.max() < 2**n
        quality.append(psnr(w, lut.astype(np.float32)[idx]))
    assert quality == sorted(quality)


def test_analysis_has_apples_keys_and_fewer_bits_cost_more_psnr(
    analysis: tuple[Path, dict[str, Any]],
) -> None:
    path, result = analysis
    on_disk = json.loads(path.read_text())
    assert {"model_version", "single_layer", "cumulative", "baselines", "recipes"} <= set(on_disk)
    assert on_disk["model_version"] == "tiny"
    layers = list(result["orchestrate"]["sizes"])
    assert layers and all(size > MIN_SIZE for size in result["orchestrate"]["sizes"].values())
    per_bits = [mean(mean(result["single_layer"][str(n)][name]) for name in layers) for n in NBITS]
    assert per_bits == sorted(per_bits), per_bits
    assert per_bits[0] < per_bits[-1] - 10
    # cumulative: palettizing more layers loses signal overall; on trained weights one more
    # layer's error can partly cancel another's, so a step may gain a little, never much
    for n in NBITS:
        run = result["cumulative"][str(n)]
        order = run["metadata"]["candidates"]
        values = [mean(run[name]) for name in order]
        assert values[-1] <= values[0] + 0.5, values
        assert all(b <= a + 3.0 for a, b in itertools.pairwise(values)), values
    # grouped tables (4g16, 2g16 by default) are measured at each width, and fit about as well
    # as one table or better: better where channels differ in scale (test_palettize.py), about
    # the same on this model, whose channels do not (+0.04 dB in weight space at 2 bits)
    for n in (4, 2):
        grouped = mean(mean(result["single_layer"][f"{n}g16"][name]) for name in layers)
        assert grouped > per_bits[NBITS.index(n)] - 0.5, (n, grouped, per_bits)
        assert grouped < per_bits[NBITS.index(n) + 1], (n, grouped, per_bits)  # below a bit more
        assert result["cumulative"][f"{n}g16"]["metadata"]["group_size"] == 16
    assert result["orchestrate"]["grouped"] == ["4g16", "2g16"]
    assert set(result["orchestrate"]["channels"]) == set(layers)
    assert {"original", "linear_8bit"} <= set(result["baselines"])
    assert all(
        name.startswith("recipe_") and name.endswith("_bit_mixedpalette")
        for name in result["recipes"]
    )


def test_interrupted_analysis_resumes(
    analysis: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, full = analysis
    partial = json.loads(path.read_text())
    # as if killed during the 6-bit cumulative stage
    for n in ("6", "8"):
        run = partial["cumulative"].get(n, {})
        for name in list(run)[len(run) // 2 :]:
            run.pop(name)
    partial["cumulative"].pop("8", None)
    partial["baselines"] = {}
    partial["recipes"] = {}
    resumed_path = tmp_path / "resume.json"
    resumed_path.write_text(json.dumps(partial))
    ticks: list[str] = []
    plan = tiny_plan(resumed_path)
    resumed = analyze(
        tiny_pipe(), plan, resume=True, progress=lambda d, t, what: ticks.append(what)
    )
    assert all(
        "cumulative" in t and (t.startswith("6-bit") or t.startswith("8-bit")) for t in ticks
    )
    assert resumed["cumulative"]["8"] == full["cumulative"]["8"]
    assert resumed["cumulative"]["6"] == full["cumulative"]["6"]


@pytest.mark.parametrize("every_s", [0.0, 1e9])
def test_ctrl_c_keeps_every_measurement_and_saves_are_spaced_in_time(
    every_s: float,
    analysis: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.compression import analysis as analysis_module

    _, full = analysis
    writes: list[Path] = []
    real = analysis_module._save
    monkeypatch.setattr(analysis_module, "_save", lambda r, p: (writes.append(p), real(r, p)))
    monkeypatch.setattr(analysis_module, "SAVE_EVERY_S", every_s)

    def stop(done: int, total: int, what: str) -> None:
        if done == 7:
            raise KeyboardInterrupt

    out = tmp_path / "stopped.json"
    with pytest.raises(KeyboardInterrupt):
        analyze(tiny_pipe(), tiny_plan(out), resume=False, progress=stop)
    partial = json.loads(out.read_text())
    measured = {
        (key, name): psnrs
        for key, run in partial["single_layer"].items()
        for name, psnrs in run.items()
        if name != "metadata"
    }
    assert len(measured) == 7  # each one made before the interrupt, as the full run made it
    assert all(full["single_layer"][key][name] == v for (key, name), v in measured.items())
    assert not partial["recipes"] and not partial["baselines"]
    # saved after every measurement when asked to, else once, on the way out
    assert len(writes) == (7 if every_s == 0 else 1)


def test_an_analysis_from_before_grouped_palettization_resumes_with_them(
    analysis: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, full = analysis
    old = json.loads(path.read_text())
    for stage in ("single_layer", "cumulative"):
        for key in ("4g16", "2g16"):
            old[stage].pop(key)
    for key in ("grouped", "channels"):
        old["orchestrate"].pop(key)
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))
    # what an analysis without grouped entries still gives
    assert recipe_for_bits(old, 4.5) == recipe_for_bits(full, 4.5, grouped=False)
    ticks: list[str] = []
    plan = tiny_plan(old_path)
    resumed = analyze(tiny_pipe(), plan, resume=True, progress=lambda d, t, w: ticks.append(w))
    assert ticks and all(t.startswith(("4g16 ", "2g16 ")) for t in ticks)
    assert resumed["single_layer"] == full["single_layer"]
    assert resumed["cumulative"] == full["cumulative"]
    assert resumed["orchestrate"]["channels"] == full["orchestrate"]["channels"]


def test_recipe_for_4_5_bits_averages_4_5(analysis: tuple[Path, dict[str, Any]]) -> None:
    _, result = analysis
    recipe, avg, predicted = recipe_for_bits(result, 4.5)
    assert 4.25 <= avg <= 4.5
    assert set(recipe) == set(result["orchestrate"]["sizes"])
    assert set(recipe.values()) <= {*NBITS, 16, "4g16", "2g16"}
    assert 0 < predicted < 120
    per_tensor, pt_avg, pt_predicted = recipe_for_bits(result, 4.5, grouped=False)
    assert set(per_tensor.values()) <= {*NBITS, 16} and 4.25 <= pt_avg <= 4.5
    # grouped options only add choices: the prediction can only improve
    assert predicted >= pt_predicted
    _, lower_avg, lower_pred = recipe_for_bits(result, 2.5)
    assert lower_avg < avg and lower_pred < predicted
    strict, strict_avg = recipe_for_psnr(result, 200.0)
    assert set(strict.values()) == {16} and strict_avg == 16


def test_apple_recipe_json_is_accepted_as_is(
    tmp_path: Path, analysis: tuple[Path, dict[str, Any]]
) -> None:
    _, result = analysis
    name = next(iter(result["recipes"]))
    apple = {"model_version": "tiny", "baselines": {}, "recipes": {name: result["recipes"][name]}}
    (tmp_path / "apple.json").write_text(json.dumps(apple))
    assert load_recipe(f"{tmp_path / 'apple.json'}:{name}") == (name, result["recipes"][name])
    (tmp_path / "plain.json").write_text(json.dumps(result["recipes"][name]))
    assert load_recipe(str(tmp_path / "plain.json"))[1] == result["recipes"][name]
    with pytest.raises(CompressionError, match="has no recipe 'nope'"):
        load_recipe(f"{tmp_path / 'apple.json'}:nope")


def test_torch_variant_runs_through_the_job_path_close_to_fp16(
    analysis: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from PIL import Image

    from workers.compression.commands import compress_model
    from workers.task import PipelineCache, run_job

    _, result = analysis
    recipe, avg, _ = recipe_for_bits(result, 4.5)
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    info = compress_model(
        "tiny",
        tmp_path / "variant",
        fmt="torch",
        recipe_spec=str(tmp_path / "r.json"),
        name="mixed45",
    )
    assert info["palettized_mb"] < info["fp16_mb"]
    assert info["recipe_avg_bits"] == pytest.approx(avg)
    job = {**PIPELINE_JOB, "prompt": "a lighthouse", "negative_prompt": "", "seed": 3, "steps": 8}
    cache = PipelineCache()
    ref = np.asarray(Image.open(io.BytesIO(run_job(job, cache).png)).convert("RGB"))
    out = run_job({**job, "quantization": "mixed45"}, cache)
    img = np.asarray(Image.open(io.BytesIO(out.png)).convert("RGB"))
    image_psnr = psnr(ref.astype(float), img.astype(float))
    print(f"tiny model, mixed 4.5-bit vs fp16 image PSNR: {image_psnr:.1f} dB")
    assert not np.array_equal(ref, img)
    assert image_psnr > 15.0


@pytest.fixture(scope="module")
def coreml_folder(tiny_coreml: Callable[[str], Path]) -> Path:
    return tiny_coreml("fp16")


def test_converted_folder_layout_and_input_shapes(coreml_folder: Path) -> None:
    import coremltools as ct

    names = {p.name for p in coreml_folder.iterdir()}
    assert {
        "TextEncoder.mlpackage",
        "Unet.mlpackage",
        "VAEDecoder.mlpackage",
        "vocab.json",
        "merges.txt",
    } <= names
    assert (coreml_folder / "scheduler" / "scheduler_config.json").is_file()
    vocab = json.loads((coreml_folder / "vocab.json").read_text())
    assert vocab == json.loads((ensure_tiny_model() / "tokenizer" / "vocab.json").read_text())
    assert (coreml_folder / "merges.txt").read_text().startswith("#version: 0.2")
    spec = ct.models.MLModel(str(coreml_folder / "Unet.mlpackage"), skip_model_load=True).get_spec()
    shapes = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    assert shapes == {
        "sample": [2, 8, 16, 16],  # tiny: 8 latent channels, x4 (a 16x16 latent of 64 px)
        "timestep": [2],
        "encoder_hidden_states": [2, 32, 1, 77],
    }
    assert [o.name for o in spec.description.output] == ["noise_pred"]
    assert spec.WhichOneof("Type") == "mlProgram"


def test_coreml_palettization_matches_the_recipe_layer_by_layer(
    coreml_folder: Path, analysis: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    import shutil

    from workers.compression.analysis import Probe
    from workers.compression.coreml import (
        coreml_weight_name,
        load_package_weights,
        package_megabytes,
        palettize_unet,
        read_palettization,
    )
    from workers.compression.palettize import unet_average_bits

    _, result = analysis
    recipe, _, _ = recipe_for_bits(result, 4.5, grouped=False)  # the folder is for macOS 13
    folder = tmp_path / "c"
    shutil.copytree(coreml_folder, folder)
    pipe = tiny_pipe()
    fp16_mb = package_megabytes(folder / "Unet.mlpackage")
    palettize_unet(folder, pipe.unet, recipe)
    back = read_palettization(folder / "Unet.mlpackage")
    expected = {coreml_weight_name(n): b for n, b in recipe.items() if b != 16}
    assert back == expected
    # smaller in proportion to the average bits (plus lookup tables and the package's overhead)
    ratio = package_megabytes(folder / "Unet.mlpackage") / fp16_mb
    assert ratio == pytest.approx(unet_average_bits(pipe.unet, recipe) / 16, abs=0.08)
    # and its decompressed weights, run in torch, stay close to the original
    probe = Probe(pipe, PROBE)
    reference = probe.run()
    assert load_package_weights(pipe.unet, folder / "Unet.mlpackage") > len(expected)
    quality = mean(psnr(r, t) for r, t in zip(reference, probe.run(), strict=True))
    assert 15 < quality < 100


def linear_package(path: Path, minimum_os: str) -> Any:
    """A one-layer Core ML program (a 256 -> 64 Linear whose output channels differ in scale)
    and its weight, for coremltools' palettization on its own."""
    import coremltools as ct
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 64, bias=False).eval()
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.05, 3.0, 64)[:, None])
        traced = torch.jit.trace(layer, torch.zeros(1, 256))
    with warnings.catch_warnings():  # conversion notes, as in convert_pipeline
        warnings.simplefilter("ignore")
        model = ct.convert(
            traced,
            convert_to="mlprogram",
            inputs=[ct.TensorType(name="x", shape=(1, 256))],
            outputs=[ct.TensorType(name="y")],
            minimum_deployment_target=getattr(ct.target, minimum_os),
            skip_model_load=True,
        )
    model.save(str(path))
    return ct.models.MLModel(str(path), skip_model_load=True), layer.weight.detach().numpy()


def test_coremltools_grouped_palettization_has_a_table_per_16_channels(tmp_path: Path) -> None:
    import coremltools.optimize.coreml as cto

    from workers.compression.coreml import package_weights, palettizer_config, read_palettization
    from workers.compression.palettize import Palette, palettize_grouped

    model, weight = linear_package(tmp_path / "l.mlpackage", "macOS15")
    (name,) = cto.get_weights_metadata(model, weight_threshold=1000)
    config = cto.OptimizationConfig(op_name_configs={name: palettizer_config(cto, Palette(4, 16))})
    chosen = config.op_name_configs[name]
    assert (chosen.granularity.name, chosen.group_size) == ("PER_GROUPED_CHANNEL", 16)
    compressed = cto.palettize_weights(model, config)
    compressed.save(str(tmp_path / "p.mlpackage"))
    assert read_palettization(tmp_path / "p.mlpackage") == {name: "4g16"}
    dense = next(
        iter(
            cto.get_weights_metadata(
                cto.decompress_weights(compressed), weight_threshold=1
            ).values()
        )
    ).val
    assert dense.shape == weight.shape == (64, 256)
    assert [len(np.unique(dense[i : i + 16])) for i in range(0, 64, 16)] == [16] * 4
    assert len(np.unique(dense)) > 16
    ours = palettize_grouped(weight, 4, 16)
    assert [len(np.unique(ours[i : i + 16])) for i in range(0, 64, 16)] == [16] * 4
    # the same granularity: our k-means and coremltools' fit the weight about as well
    assert psnr(weight, ours) == pytest.approx(psnr(weight, dense), abs=1.0)
    # a per-tensor table in the same (iOS 18) program reads back as plain bits
    per_tensor = cto.palettize_weights(
        model, cto.OptimizationConfig(op_name_configs={name: palettizer_config(cto, Palette(4))})
    )
    per_tensor.save(str(tmp_path / "t.mlpackage"))
    assert read_palettization(tmp_path / "t.mlpackage") == {name: 4}
    # package_weights reads each table where it stands: coremltools' decompressed weights, bit
    # for bit, under the weights' own names, and nothing of the tables and indices themselves
    for package, reference in (("p", compressed), ("t", per_tensor)):
        read = package_weights(tmp_path / f"{package}.mlpackage")
        want = {
            k.removesuffix("_palettized"): meta.val
            for k, meta in cto.get_weights_metadata(
                cto.decompress_weights(reference), weight_threshold=1
            ).items()
        }
        assert name in read and list(read) == list(want)  # the weight and the linear's bias
        for k, value in want.items():
            assert read[k].dtype == value.dtype and np.array_equal(read[k], value)


def test_coremltools_refuses_grouped_tables_in_a_macos_13_program(tmp_path: Path) -> None:
    """Why a grouped recipe's folder is converted for macOS 15 (coremltools 9 refuses)."""
    import coremltools.optimize.coreml as cto

    from workers.compression.coreml import palettizer_config
    from workers.compression.palettize import Palette

    model, _ = linear_package(tmp_path / "l.mlpackage", "macOS13")
    (name,) = cto.get_weights_metadata(model, weight_threshold=1000)
    config = cto.OptimizationConfig(op_name_configs={name: palettizer_config(cto, Palette(4, 16))})
    with pytest.raises(ValueError, match="supported since iOS18"):
        cto.palettize_weights(model, config)


def test_grouped_recipe_on_a_macos_13_folder_is_refused_before_palettizing(
    coreml_folder: Path, tmp_path: Path
) -> None:
    import shutil

    from workers.compression.coreml import palettize_unet
    from workers.compression.palettize import uniform_recipe

    folder = tmp_path / "c"
    shutil.copytree(coreml_folder, folder)
    pipe = tiny_pipe()
    recipe = uniform_recipe(pipe.unet, "4g16", MIN_SIZE)
    first = next(iter(recipe))
    before = (folder / "Unet.mlpackage" / "Manifest.json").read_bytes()
    with pytest.raises(CompressionError) as info:
        palettize_unet(folder, pipe.unet, recipe)
    assert str(info.value) == (
        f"{folder} was converted for macOS13, but the recipe's grouped palettization (e.g. "
        f"{first!r}: '4g16') needs macOS15 (iOS 18): convert it with minimum_os='macOS15'"
    )
    assert (folder / "Unet.mlpackage" / "Manifest.json").read_bytes() == before


def test_grouped_mixed_recipe_compresses_to_a_macos_15_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plumbing, on the random-weight dummy (tests/dummy_pipeline.py): a mixed recipe with a
    grouped layer converts for macOS 15 and palettizes layer by layer."""
    from tests.dummy_pipeline import dummy_pipe
    from workers.compression import commands
    from workers.compression.analysis import Probe
    from workers.compression.coreml import (
        coreml_weight_name,
        load_package_weights,
        read_palettization,
    )
    from workers.compression.palettize import UNIFORM_MIN_SIZE, Palette, candidate_layers
    from workers.compression.variants import unet_megabytes

    def dummy() -> Any:  # the same weights at each call (its seed)
        return dummy_pipe(tmp_path / "tokenizer")

    monkeypatch.setattr(commands, "_pipeline", lambda model, **kw: dummy())
    # a mixed recipe over the dummy's layers, as an analysis makes one: some kept at fp16
    widths = itertools.cycle((16, 8, 6, 4, 16, 4))
    recipe = {n: next(widths) for n in candidate_layers(dummy().unet, UNIFORM_MIN_SIZE)}
    # at least one grouped layer, whatever the mix gave
    name = next(n for n, v in recipe.items() if v != 16)
    recipe[name] = "4g16"
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    out = tmp_path / "mixed-coreml"
    info = commands.compress_model(
        "dummy", out, fmt="coreml", recipe_spec=str(tmp_path / "r.json"), name="g45"
    )
    assert info["minimum_os"] == "macOS15"
    layout = json.loads((out / "orchestrate-coreml.json").read_text())
    assert layout["minimum_os"] == "macOS15"
    assert layout["palettization"]["recipe"] == recipe
    expected = {coreml_weight_name(n): v for n, v in recipe.items() if v != 16}
    assert read_palettization(out / "Unet.mlpackage") == expected
    assert layout["palettization"]["coreml_bits"] == expected
    # the package's size is what the accounting says (indices plus every group's table), plus
    # the package's own overhead, as large as the fp16 package's over the fp16 weights
    pipe = dummy()
    overhead = info["fp16_mb"] - unet_megabytes(pipe.unet, {})["fp16_mb"]
    assert 0 < overhead < 1
    assert info["palettized_mb"] - info["estimated_mb"] == pytest.approx(overhead, abs=0.05)
    # decompressed into torch: every palettized weight holds its tables' values
    reference = Probe(pipe, PROBE).run()
    assert load_package_weights(pipe.unet, out / "Unet.mlpackage") > len(expected)
    modules = dict(pipe.unet.named_modules())
    w = modules[name].weight.detach().numpy()
    group = Palette(4, 16).group_size or 0
    assert max(len(np.unique(w[i : i + group])) for i in range(0, w.shape[0], group)) <= 16
    assert len(np.unique(w)) > 16
    probe = Probe(pipe, PROBE)
    quality = mean(psnr(r, t) for r, t in zip(reference, probe.run(), strict=True))
    assert 15 < quality < 100
    assert quality == pytest.approx(info["psnr_db"], abs=0.5)


def test_split_einsum_attention_matches_the_original() -> None:
    import torch

    from workers.compression.coreml import SplitEinsumAttnProcessor

    pipe = tiny_pipe()
    unet = pipe.unet.eval()
    x = torch.randn(2, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    states = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = unet(x, 500, states).sample
        unet.set_attn_processor(SplitEinsumAttnProcessor())
        after = unet(x, 500, states).sample
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)


def test_coreml_backend_refuses_off_macos_in_one_sentence() -> None:
    from contract.errors import JobInputError
    from workers.task import PipelineCache, run_job

    cache = PipelineCache(backend="coreml")
    job = {"model": "tiny", "quantization": "fp16"}
    with pytest.raises(JobInputError) as info:
        run_job(job, cache)
    assert str(info.value) == (
        "the Core ML backend needs macOS: Core ML prediction (MLModel.predict) only runs on macOS, "
        "not on Linux; use --backend diffusers here"
    )


def test_a_macos_15_folder_is_refused_on_an_older_mac_in_one_sentence() -> None:
    from workers.backends.coreml import minimum_os_problem

    grouped = {"minimum_os": "macOS15"}
    assert minimum_os_problem(grouped, "15.1") is None
    assert minimum_os_problem(grouped, "26.0") is None
    assert minimum_os_problem(grouped, "14.6.1") == (
        "this Core ML folder needs macOS15 (its UNet uses grouped-channel palettization); this "
        "Mac runs macOS 14.6.1: use a per-tensor variant here"
    )
    assert minimum_os_problem({}, "13.0") is None  # folders from before minimum_os
    assert minimum_os_problem({"minimum_os": "macOS13"}, "13.5") is None


def test_unet_inputs_use_apples_layout() -> None:
    from workers.backends.coreml import unet_inputs

    latents = np.zeros((1, 4, 8, 8), dtype=np.float32)
    hidden = np.arange(2 * 77 * 32, dtype=np.float32).reshape(2, 77, 32)
    inputs = unet_inputs(latents, 500.0, hidden)
    assert inputs["sample"].shape == (2, 4, 8, 8)
    assert inputs["timestep"].tolist() == [500.0, 500.0]
    assert inputs["encoder_hidden_states"].shape == (2, 32, 1, 77)
    assert inputs["encoder_hidden_states"][1, 5, 0, 7] == hidden[1, 7, 5]
