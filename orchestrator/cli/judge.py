"""``orchestrate judge``: score images against their prompts with the built-in judge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from contract.errors import UsageError
from contract.limits import SCORE
from orchestrator.cli.common import main


def _images(paths: tuple[Path, ...]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob("*.png") if ".staging" not in q.parts))
        elif p.is_file():
            found.append(p)
        else:
            raise UsageError(f"{p}: no such file or folder")
    return found


def _recorded_prompt(path: Path) -> str | None:
    from workers.metadata import read_png_metadata

    try:
        meta = read_png_metadata(path.read_bytes()).get("meta")
    except (OSError, SyntaxError, ValueError):
        return None
    job = meta.get("job") if isinstance(meta, dict) else None
    prompt = job.get("prompt") if isinstance(job, dict) else None
    return prompt if isinstance(prompt, str) else None


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--prompt", help="Judge every image against this prompt [default: its own, from the PNG]."
)
@click.option(
    "--min-adherence",
    type=click.FloatRange(*SCORE),
    help="Exit 1 when the adherence over all judged images is below this.",
)
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def judge(
    paths: tuple[Path, ...], prompt: str | None, min_adherence: float | None, as_json: bool
) -> None:
    """Score images (PNG files, or folders of them) against their prompts with the built-in
    judge: which background, colour, shape, count, size and position each shows, and the share
    of what its prompt states that it shows. The judge knows only the scenes world the
    built-in tiny model draws ("two small yellow squares on a black background"); other
    prompts are listed as not judged."""
    from PIL import Image, UnidentifiedImageError

    from workers.tiny.judge import Judgement, adherence
    from workers.tiny.judge import judge as judge_image

    rows: list[dict[str, Any]] = []
    judged: list[Judgement] = []
    for path in _images(paths):
        text = prompt if prompt is not None else _recorded_prompt(path)
        row: dict[str, Any] = {"path": str(path), "prompt": text}
        if text is None:
            row["error"] = "no prompt recorded in this image (give --prompt)"
        else:
            try:
                with Image.open(path) as image:
                    verdict = judge_image(image.convert("RGB"), text)
            except (UnidentifiedImageError, OSError) as exc:
                row["error"] = f"not a readable image: {exc}"
            else:
                if verdict is None:
                    row["error"] = "prompt not in the scenes world: not judged"
                else:
                    judged.append(verdict)
                    row.update(
                        score=round(verdict.score, 4),
                        expected=verdict.expected,
                        found=verdict.found,
                        wrong=[k for k in verdict.expected if k not in verdict.right],
                    )
        rows.append(row)
    overall = adherence(judged) if judged else None
    if as_json:
        click.echo(json.dumps({"adherence": overall, "judged": len(judged), "images": rows}))
    else:
        for row in rows:
            if "error" in row:
                click.echo(f"{row['path']}: {row['error']}")
                continue
            wrong = ", ".join(
                f"{k} {row['found'][k]!r} not {row['expected'][k]!r}" for k in row["wrong"]
            )
            click.echo(f"{row['path']}: {row['score']:.2f}" + (f"  ({wrong})" if wrong else ""))
        if overall is None:
            click.echo("no image judged")
        else:
            click.echo(
                f"adherence {overall:.3f}: the share of stated attributes shown, over "
                f"{len(judged)} image(s)"
            )
    if min_adherence is not None and (overall is None or overall < min_adherence):
        raise SystemExit(1)
