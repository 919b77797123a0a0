"""Commands on the finished dataset: export it, and check that an image reproduces."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from contract.limits import DEVICES
from orchestrator.cli.common import State, configure_logging, main, option, pass_state
from orchestrator.export import DEFAULT_SHARD_SIZE, FORMATS
from orchestrator.extras import require as require_extra


@main.command()
@click.argument("outdir", type=click.Path(file_okay=False))
@option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    required=True,
    help="imagefolder: PNGs + metadata.jsonl; parquet: images embedded; webdataset: tar shards.",
)
@option("--batch", "batch_id", type=int, default=None, help="Only this batch.")
@option("--split", default="train", help="Split name: the folder, file or shard prefix.")
@option(
    "--shard-size",
    type=click.IntRange(1),
    default=DEFAULT_SHARD_SIZE,
    help="Samples per webdataset shard.",
)
@option(
    "--card/--no-card",
    default=True,
    help="Write OUTDIR/README.md, a dataset card the Hugging Face Hub reads (--no-card: leave "
    "OUTDIR's own README.md alone).",
)
@pass_state
def export(
    state: State,
    outdir: str,
    fmt: str,
    batch_id: int | None,
    split: str,
    shard_size: int,
    card: bool,
) -> None:
    """Export the succeeded jobs' images and metadata to OUTDIR as a dataset.

    The same database and images give byte-identical files, with a dataset card (README.md:
    licences, what made the images, how they are marked).
    """
    from orchestrator.export import export_dataset

    if fmt == "parquet":
        require_extra("parquet")
    result = export_dataset(
        state.store(existing=True),
        Path(outdir).expanduser().absolute(),
        fmt,
        batch_id=batch_id,
        split=split,
        shard_size=shard_size,
        card=card,
    )
    click.echo(result.summary())


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@option(
    "--compare",
    is_flag=True,
    help="Also write the regenerated image beside the original as <name>.reproduced.png.",
)
@option(
    "--device",
    type=click.Choice(DEVICES),
    default=None,
    help="Torch device [default: the one recorded in the image].",
)
@click.pass_context
def reproduce(ctx: click.Context, image: str, compare: bool, device: str | None) -> None:
    """Regenerate IMAGE from its own metadata and compare the pixels.

    Exits 0 when the pixels are identical, 1 when they differ (PSNR and the largest pixel
    difference are printed), 2 when IMAGE has no orchestrate metadata.
    """
    from orchestrator.reproduce import reproduce_image, reproduced_path

    require_extra("diffusers")
    configure_logging(ctx.find_root().meta["verbose"])
    path = Path(image).expanduser()
    result = reproduce_image(path, device=device, write_copy=compare)
    click.echo(result.summary())
    if not result.identical and result.differences:
        click.echo("recorded -> here: " + "; ".join(result.differences))
    if compare:
        click.echo(f"regenerated image: {reproduced_path(path)}")
    sys.exit(0 if result.identical else 1)
