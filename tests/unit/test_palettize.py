"""Grouped-channel palettization on its own: the recipe values, the numpy k-means per group of
output channels, its size accounting, and recipes that may choose it (numpy only, no model);
and linear int4 quantization per block of input channels against coremltools' own numpy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.errors import CompressionError
from workers.compression.commands import layers_by_palette
from workers.compression.palettize import (
    KEEP,
    NBITS,
    Palette,
    grouped_luts,
    palettize_array,
    palettize_grouped,
    parse_palette,
    psnr,
    recipe_minimum_os,
)
from workers.compression.recipes import (
    average_bits,
    load_recipe,
    recipe_for_bits,
    recipe_for_psnr,
)

BAD_VALUE = (
    "r.json: layer 'mid': {!r} is not a palettization; use 1, 2, 4, 6, 8 bits (one lookup "
    "table per tensor), 16 (keep fp16), or '<bits>g<group size>' such as '4g16' (one lookup "
    "table per 16 output channels)"
)


def weight(channels: int = 64, seed: int = 0) -> np.ndarray:
    """A conv weight whose output channels differ in scale, as trained ones do."""
    rng = np.random.default_rng(seed)
    scale = np.repeat(rng.uniform(0.05, 2.0, channels // 16), 16)[:, None, None, None]
    return (rng.standard_normal((channels, 32, 3, 3)) * scale).astype(np.float32)


def test_recipe_values_parse_both_forms_and_round_trip() -> None:
    assert parse_palette(4) == Palette(4) and parse_palette("4") == Palette(4)
    assert parse_palette(KEEP).keep
    grouped = parse_palette("4g16")
    assert grouped == Palette(4, 16) and grouped.grouped and not grouped.keep
    assert grouped.to_json() == "4g16" and Palette(6).to_json() == 6 and Palette(6).key == "6"
    assert all(parse_palette(p.to_json()) == p for p in (Palette(2, 8), Palette(8), Palette(16)))


@pytest.mark.parametrize("bad", [3, 0, 32, "3g16", "16g16", "4g0", "4g", "g16", "4.5", 4.5, True])
def test_bad_recipe_values_are_named_with_their_place(bad: object) -> None:
    with pytest.raises(CompressionError) as info:
        parse_palette(bad, "r.json: layer 'mid'")
    assert str(info.value) == BAD_VALUE.format(bad)


def test_grouped_kmeans_gives_each_group_its_own_table() -> None:
    w = weight()
    luts, idx = grouped_luts(w, 4, 16)
    assert luts.shape == (4, 16) and luts.dtype == np.float16
    assert idx.shape == w.shape and idx.max() < 16
    dense = palettize_grouped(w, 4, 16)
    assert dense.shape == w.shape and dense.dtype == np.float32
    for g in range(4):
        group = dense[16 * g : 16 * (g + 1)]
        assert len(np.unique(group)) <= 16
        assert set(np.unique(group)) <= set(luts[g].astype(np.float32))
    assert len(np.unique(dense)) > 16  # not one table for all
    np.testing.assert_array_equal(dense, palettize_grouped(w, 4, 16))  # deterministic
    # one group of every channel is the per-tensor table
    np.testing.assert_array_equal(palettize_grouped(w, 4, 64), palettize_array(w, 4))


def test_grouped_tables_fit_channels_of_different_scales_better() -> None:
    w = weight()
    for bits in (2, 4):
        assert psnr(w, palettize_grouped(w, bits, 16)) > psnr(w, palettize_array(w, bits)) + 1


def test_channels_not_in_whole_groups_are_refused_as_coremltools_would_skip_them() -> None:
    with pytest.raises(CompressionError) as info:
        grouped_luts(weight(48)[:40], 4, 16)
    assert str(info.value) == (
        "cannot palettize a weight of shape (40, 32, 3, 3) in groups of 16 output channels: "
        "40 is not a multiple of 16"
    )
    assert Palette(4, 16).fits(48) and not Palette(4, 16).fits(40) and Palette(4).fits(40)


def test_storage_counts_one_fp16_table_per_group() -> None:
    n = 64 * 32 * 9
    assert Palette(KEEP).storage_bits(n, 64) == 16 * n
    assert Palette(4).storage_bits(n, 64) == 4 * n + 16 * 16
    assert Palette(4, 16).storage_bits(n, 64) == 4 * n + 4 * 16 * 16
    assert Palette(8, 16).storage_bits(n, 64) == 8 * n + 4 * 256 * 16
    with pytest.raises(CompressionError, match="needs the layer's output channels"):
        Palette(4, 16).storage_bits(n)


def test_any_grouped_layer_needs_macos_15() -> None:
    assert recipe_minimum_os({"a": 4, "b": 16}) == "macOS13"
    assert recipe_minimum_os({"a": 4, "b": "4g16"}) == "macOS15"
    assert layers_by_palette({"a": 4, "b": "4g16", "c": 16, "d": 4, "e": "2g16"}) == {
        "2g16": 1,
        4: 2,
        "4g16": 1,
        16: 1,
    }


def synthetic_analysis(grouped: bool = True) -> dict[str, Any]:
    """Three layers of 64 channels; the "scaled" one's channels differ in scale, so its grouped
    tables are far better than its per-tensor ones."""
    sizes = {"flat": 64 * 288, "scaled": 64 * 288, "tiny": 64 * 288}
    per_bits = {8: 50.0, 6: 40.0, 4: 30.0, 2: 18.0, 1: 10.0}
    single: dict[str, dict[str, Any]] = {}
    for n in NBITS:
        single[str(n)] = {
            "metadata": {"nbits": n},
            "flat": [per_bits[n]],
            "scaled": [per_bits[n] - 8],
            "tiny": [per_bits[n] + 5],
        }
    analysis: dict[str, Any] = {
        "single_layer": single,
        "orchestrate": {"sizes": sizes},
    }
    if grouped:
        for n, gain in ((4, 10.0), (2, 10.0)):
            single[f"{n}g16"] = {
                "metadata": {"nbits": n, "group_size": 16},
                "flat": [per_bits[n] + 0.1],
                "scaled": [per_bits[n] - 8 + gain],
                "tiny": [per_bits[n] + 5.1],
            }
        analysis["orchestrate"]["channels"] = dict.fromkeys(sizes, 64)
    return analysis


def test_recipe_for_bits_chooses_grouped_where_it_pays_and_counts_its_tables() -> None:
    analysis = synthetic_analysis()
    recipe, avg, predicted = recipe_for_bits(analysis, 4.5)
    assert recipe["scaled"] in ("4g16", "2g16")
    assert avg <= 4.5
    assert avg == pytest.approx(
        average_bits(recipe, analysis["orchestrate"]["sizes"], dict.fromkeys(recipe, 64))
    )
    per_tensor, pt_avg, pt_predicted = recipe_for_bits(analysis, 4.5, grouped=False)
    assert all(isinstance(v, int) for v in per_tensor.values())
    assert pt_avg <= 4.5 and predicted > pt_predicted


def test_a_grouped_option_no_better_than_a_smaller_one_is_never_taken() -> None:
    analysis = synthetic_analysis()
    # 4g16 of "flat" as noisy as its per-tensor 2-bit: larger and no better, never worth it
    analysis["single_layer"]["4g16"]["flat"] = [analysis["single_layer"]["2"]["flat"][0]]
    for target in (14.0, 10.0, 7.0, 5.0, 4.5, 3.0, 2.0):
        recipe, _, _ = recipe_for_bits(analysis, target)
        assert recipe["flat"] != "4g16", target


def test_analyses_without_grouped_entries_give_the_per_tensor_ladder() -> None:
    analysis = synthetic_analysis(grouped=False)
    recipe, avg, _ = recipe_for_bits(analysis, 7.0)
    # the most sensitive layer keeps the most bits
    assert recipe == {"flat": 6, "scaled": 8, "tiny": 6}
    size = 64 * 288
    assert avg == pytest.approx((20 * size + (64 + 256 + 64) * 16) / (3 * size))
    # the tables count: 8 bits everywhere is over a budget of 8.0, so one layer steps down
    recipe, avg, _ = recipe_for_bits(analysis, 8.0)
    assert recipe == {"flat": 8, "scaled": 8, "tiny": 6} and avg <= 8.0


def test_grouped_entries_without_channels_are_refused() -> None:
    analysis = synthetic_analysis()
    del analysis["orchestrate"]["channels"]
    with pytest.raises(CompressionError, match="no output channels per layer"):
        recipe_for_bits(analysis, 4.5)
    assert all(
        isinstance(v, int) for v in recipe_for_bits(analysis, 4.5, grouped=False)[0].values()
    )


def test_recipe_for_psnr_takes_the_smallest_palettization_above_the_floor() -> None:
    analysis = synthetic_analysis()
    analysis["cumulative"] = {k: v for k, v in analysis["single_layer"].items()}
    recipe, _ = recipe_for_psnr(analysis, 25.0)
    # "scaled": per-tensor 4-bit is 22 dB, 2g16 20 dB, 4g16 32 dB: the grouped 4-bit one
    assert recipe == {"flat": 4, "scaled": "4g16", "tiny": 4}
    del analysis["cumulative"]["4g16"], analysis["cumulative"]["2g16"]
    assert recipe_for_psnr(analysis, 25.0)[0] == {"flat": 4, "scaled": 6, "tiny": 4}


def test_load_recipe_accepts_grouped_values_and_names_a_bad_one(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"up": 4, "mid": "4g16", "down": 16}))
    assert load_recipe(str(tmp_path / "r.json")) == ("r", {"up": 4, "mid": "4g16", "down": 16})
    (tmp_path / "r.json").write_text(json.dumps({"up": 4, "mid": "3g16"}))
    with pytest.raises(CompressionError) as info:
        load_recipe(str(tmp_path / "r.json"))
    assert str(info.value) == BAD_VALUE.format("3g16").replace("r.json", str(tmp_path / "r.json"))
    (tmp_path / "r.json").write_text(json.dumps({"up": 4, "mid": [4, 16]}))
    with pytest.raises(CompressionError, match="is not a recipe"):
        load_recipe(str(tmp_path / "r.json"))


def test_apply_recipe_palettizes_a_torch_layer_per_group() -> None:
    import torch

    from workers.compression.palettize import apply_recipe, unet_average_bits, uniform_recipe
    from workers.compression.variants import unet_megabytes

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 64, bias=False), torch.nn.Linear(64, 48))
    with torch.no_grad():
        model[0].weight.mul_(torch.linspace(0.1, 3.0, 64)[:, None])
    stats = apply_recipe(model, {"0": "4g16", "1": 4})
    w = model[0].weight.detach().numpy()
    assert [len(np.unique(w[i : i + 16])) for i in range(0, 64, 16)] == [16] * 4
    assert len(np.unique(model[1].weight.detach().numpy())) <= 16
    assert stats["recipe_avg_bits"] == pytest.approx(
        (4 * 64 * 256 + 4 * 256 + 4 * 64 * 48 + 256) / (64 * 256 + 64 * 48)
    )
    params = 64 * 256 + 64 * 48 + 48
    assert unet_average_bits(model, {"0": "4g16", "1": 4}) == pytest.approx(
        (4 * 64 * 256 + 4 * 256 + 4 * 64 * 48 + 256 + 16 * 48) / params
    )
    mb = unet_megabytes(model, {"0": "4g16", "1": 4})
    assert mb["palettized_mb"] == pytest.approx(
        (4 * 64 * 256 + 4 * 256 + 4 * 64 * 48 + 256 + 16 * 48) / 8e6
    )
    # a layer whose channels do not split into groups stays fp16 in a uniform grouped recipe,
    # and is refused in a recipe that names it
    assert uniform_recipe(model, "4g16", min_size=0) == {"0": "4g16", "1": "4g16"}
    assert uniform_recipe(model, "4g32", min_size=0) == {"0": "4g32", "1": KEEP}
    with pytest.raises(CompressionError) as info:
        apply_recipe(model, {"1": "4g32"})
    assert str(info.value) == (
        "recipe: layer '1' has 48 output channels, not a multiple of the group size of "
        "'4g32'; use a group size dividing 48"
    )


# -- linear quantization per block of input channels (int4b32) --------------------------------


def coremltools_block_quantized(w: np.ndarray, bits: int = 4, block: int = 32) -> Any:
    """What coremltools 9's own per-block linear_symmetric pass computes for ``w`` (the numpy
    behind ``OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4",
    granularity="per_block", block_size=32)``): its parameters, or None where it skips ``w``."""
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights

    block_sizes = [1, block] + [0] * (w.ndim - 2)  # what the pass infers for linear and conv
    return linear_quantize_weights.blockwise_compress(
        w, nbits=bits, mode="LINEAR_SYMMETRIC", signed=True, block_sizes=block_sizes
    )


@pytest.mark.parametrize("shape", [(64, 256), (48, 64, 3, 3), (16, 32, 1, 1), (7, 96)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_block_quantization_is_coremltools_int4_per_block_bit_for_bit(
    shape: tuple[int, ...], dtype: type
) -> None:
    import warnings

    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights

    from workers.compression.palettize import block_quantize_array

    rng = np.random.default_rng(1)
    scales = rng.uniform(0.01, 3.0, (shape[0],) + (1,) * (len(shape) - 1))
    w = (rng.standard_normal(shape) * scales).astype(dtype)
    w[0, :32] = 0  # an all-zero block: coremltools divides 0 by a 0 scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        params = coremltools_block_quantized(w)
    assert params is not None
    # symmetric, signed, no zero point: int4 in [-7, 7] (-8 unused), one scale per block
    assert params.offset is None and params.data.min() >= -7 and params.data.max() <= 7
    assert params.scale.shape[:2] == (shape[0], shape[1] // 32) and params.scale.dtype == dtype
    theirs = linear_quantize_weights.decompress(params)
    ours = block_quantize_array(w)
    assert ours.dtype == np.float32 and ours.shape == w.shape
    assert theirs.dtype == dtype and np.array_equal(ours, theirs.astype(np.float32))
    assert not ours[0, :32].any()
    # at most 15 values per block: each output channel's 32 input channels (x the kernel)
    per_block = ours.reshape(shape[0], shape[1] // 32, -1)
    assert max(len(np.unique(b)) for row in per_block for b in row) <= 15


def test_block_quantization_by_hand_and_a_row_not_in_whole_blocks() -> None:
    from workers.compression.palettize import (
        block_quantizable,
        block_quantize_array,
        block_quantized_bits,
    )

    # max |w| 0.875: scale 0.875 / 7 = 0.125; halves round to even, as numpy's round does
    row = np.zeros(32, dtype=np.float32)
    row[:7] = [0.875, -0.875, 0.0625, 0.1875, -0.3125, 0.05, 0.4]
    expected = np.zeros(32, dtype=np.float32)
    expected[:7] = [0.875, -0.875, 0.0, 0.25, -0.25, 0.0, 0.375]
    np.testing.assert_array_equal(block_quantize_array(row[None, :]), expected[None, :])
    # two blocks of a row get their own scales
    two = np.concatenate([row, row * 4])[None, :]
    np.testing.assert_array_equal(block_quantize_array(two)[0, 32:], expected * 4)
    # 40 input channels are one block and 8 over: coremltools skips the whole weight (it
    # quantizes no partial block), and so does the variant; so too fewer than 32 channels
    ragged = np.random.default_rng(0).standard_normal((4, 40)).astype(np.float16)
    assert coremltools_block_quantized(ragged) is None
    assert not block_quantizable(ragged.shape) and not block_quantizable((32, 8, 3, 3))
    kept = block_quantize_array(ragged)
    assert kept.dtype == np.float32 and np.array_equal(kept, ragged.astype(np.float32))
    assert block_quantized_bits(ragged.shape) == KEEP
    # the bits stored: 4 per weight and a 16-bit scale per block of 32 (x a conv's kernel)
    assert block_quantized_bits((64, 256)) == 4.5
    assert block_quantized_bits((48, 64, 3, 3)) == pytest.approx(4 + 16 / 288)
    assert block_quantized_bits((64, 256), bits=8, block=64) == 8.25
    assert block_quantized_bits((64, 256), scale_bits=32) == 5.0
