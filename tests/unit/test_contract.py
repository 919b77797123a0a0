"""A limit or a choice is spelled once, in ``contract.limits``: the CLI's options, the manifest
validator and the RQ protocol's checks all hold the same bounds."""

from __future__ import annotations

from typing import Any

import click
import pytest

from contract import limits, protocol
from contract.errors import ManifestError
from contract.status import VISIBLE_STATUSES
from orchestrator.cli.common import main
from orchestrator.manifest import Defaults, parse_manifest


def _param(command: str, name: str) -> click.Parameter:
    cmd: Any = main
    for part in command.split():
        cmd = cmd.commands[part]
    return next(p for p in cmd.params if p.name == name)


@pytest.mark.parametrize(
    ("command", "name", "limit"),
    [
        ("submit", "steps", limits.STEPS),
        ("submit", "guidance_scale", limits.GUIDANCE),
        ("submit", "width", limits.SIZE),
        ("submit", "height", limits.SIZE),
        ("submit", "min_score", limits.SCORE),
        ("submit", "quality_tries", limits.QUALITY_TRIES),
        ("generate", "seed", limits.SEED),
        ("jobs list", "below", limits.SCORE),
    ],
)
def test_the_cli_options_hold_the_contract_limits(
    command: str, name: str, limit: limits.Limit[Any]
) -> None:
    kind: Any = _param(command, name).type
    assert (kind.min, kind.max) == tuple(limit)


@pytest.mark.parametrize(
    ("command", "name", "choices"),
    [
        ("worker", "backend", limits.BACKENDS),
        ("worker", "compute_units", limits.COMPUTE_UNITS),
        ("worker", "device", limits.DEVICES),
        ("jobs list", "status", tuple(VISIBLE_STATUSES)),
    ],
)
def test_the_cli_choices_are_the_contract_choices(
    command: str, name: str, choices: tuple[str, ...]
) -> None:
    kind: Any = _param(command, name).type
    assert tuple(kind.choices) == choices


def _manifest_error(row: str) -> str:
    try:
        parse_manifest(
            f"prompt,steps,seed\n{row}\n", "m.csv", Defaults(), native_size=lambda m: (64, 64)
        )
    except ManifestError as exc:
        return str(exc.issues[0])
    raise AssertionError("accepted")


def test_the_manifest_and_the_protocol_refuse_past_the_same_bounds() -> None:
    assert f"between {limits.STEPS.min} and {limits.STEPS.max}" in _manifest_error(
        f"a,{limits.STEPS.max + 1},1"
    )
    assert str(limits.SEED.max) in _manifest_error(f"a,20,{limits.SEED.max + 1}")
    scores = [[limits.SEED.max + 1, 0.5]]
    with pytest.raises(protocol.BadMessage, match="seed is out of range"):
        protocol.check_scores(scores, "scores")
    too_many = [[1, 0.5]] * (limits.QUALITY_TRIES.max + 1)
    with pytest.raises(protocol.BadMessage, match=f"at most {limits.QUALITY_TRIES.max}"):
        protocol.check_scores(too_many, "scores")
