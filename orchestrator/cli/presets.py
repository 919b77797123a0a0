"""``orchestrate presets``: the named bundles a manifest row or ``--preset`` can use."""

from __future__ import annotations

import json

import click

from orchestrator.cli.common import main
from orchestrator.presets import MIXED, MIXED_TARGET_BITS, PRESETS


@main.command()
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def presets(as_json: bool) -> None:
    """Show the presets: scheduler, steps and quantization from the scenarios of Apple's
    Core ML recipe. A row's own columns override its preset."""
    if as_json:
        click.echo(
            json.dumps(
                {
                    p.name: {**p.values(), "compute_units": p.compute_units, "summary": p.summary}
                    for p in PRESETS.values()
                },
                indent=2,
            )
        )
        return
    click.echo(f"{'preset':<10} {'scheduler':<10} {'steps':>5}  {'quantization':<13} about")
    for p in PRESETS.values():
        click.echo(
            f"{p.name:<10} {p.scheduler:<10} {p.steps:>5}  {p.quantization:<13} {p.summary} "
            f"(Core ML: --compute-units {p.compute_units})"
        )
    click.echo(
        f"\n'{MIXED}': this machine's registered mixed-bit recipe variant of the row's model "
        f"nearest {MIXED_TARGET_BITS:g} bits, chosen at submit and recorded on each job."
    )
