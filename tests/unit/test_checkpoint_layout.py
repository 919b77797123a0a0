"""The original SD layout's numbering of UNet blocks, which single-file checkpoints use: input
and output blocks counted in one sequence each, per-level layer counts included (the LDM UNet
takes ``num_res_blocks`` as one number or a list). Key names only: no weights."""

from __future__ import annotations

from types import SimpleNamespace

from workers.models.checkpoints import unet_prefixes


def config(layers: int | list[int]) -> SimpleNamespace:
    return SimpleNamespace(
        block_out_channels=[32, 64, 64],
        layers_per_block=layers,
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    )


def test_one_count_for_every_level_numbers_blocks_as_sd_1_5_does() -> None:
    pairs = dict(unet_prefixes(config(2)))
    assert pairs["down_blocks.0.resnets.1.conv1."] == "input_blocks.2.0.in_layers.2."
    assert pairs["down_blocks.0.downsamplers.0.conv."] == "input_blocks.3.0.op."
    assert pairs["down_blocks.2.attentions.1."] == "input_blocks.8.1."
    assert pairs["up_blocks.0.resnets.2.conv1."] == "output_blocks.2.0.in_layers.2."
    assert pairs["up_blocks.0.upsamplers.0.conv."] == "output_blocks.2.2.conv."
    assert pairs["up_blocks.2.resnets.2.conv1."] == "output_blocks.8.0.in_layers.2."


def test_a_count_per_level_shifts_every_later_block() -> None:
    pairs = dict(unet_prefixes(config([1, 2, 2])))
    # input: conv_in 0 | level 0: 1, down 2 | level 1: 3 4, down 5 | level 2: 6 7
    assert pairs["down_blocks.0.resnets.0.conv1."] == "input_blocks.1.0.in_layers.2."
    assert "down_blocks.0.resnets.1.conv1." not in pairs
    assert pairs["down_blocks.0.downsamplers.0.conv."] == "input_blocks.2.0.op."
    assert pairs["down_blocks.1.downsamplers.0.conv."] == "input_blocks.5.0.op."
    assert pairs["down_blocks.2.attentions.1."] == "input_blocks.7.1."
    # output, deepest level first: 0 1 2 (up) | 3 4 5 (up) | 6 7, the last level with 1 + 1
    assert pairs["up_blocks.0.upsamplers.0.conv."] == "output_blocks.2.2.conv."
    assert pairs["up_blocks.1.upsamplers.0.conv."] == "output_blocks.5.2.conv."
    assert pairs["up_blocks.2.resnets.1.conv1."] == "output_blocks.7.0.in_layers.2."
    assert "up_blocks.2.resnets.2.conv1." not in pairs
