#!/usr/bin/env python
r"""Train a built-in model from code and save it as a diffusers folder: the tiny Stable Diffusion
(``--recipe unet``, the default) or the tiny SD3-style flow-matching model (``--recipe flow``).

    .venv/bin/python scripts/train_tiny.py                  # the shipped model, into workers/tiny/model
    .venv/bin/python scripts/train_tiny.py --recipe flow    # the shipped tiny-flow, workers/tiny/flow_model
    .venv/bin/python scripts/train_tiny.py --out DIR        # elsewhere
    .venv/bin/python scripts/train_tiny.py --scale 0.05     # a short smoke run (5% of the steps)
    .venv/bin/python scripts/train_tiny.py --out DIR --set unet_steps=8000 \
        --set 'unet_channels=[32,64,64]'                    # another recipe (JSON values)

It draws its own dataset (``workers/tiny/scenes.py``), trains the VAE, then the UNet with the text
encoder (``workers/tiny/training.py``); the flow recipe reuses the shipped tiny's VAE and trains an
MMDiT with its text encoders (``workers/tiny/flow_training.py``). It shows a progress bar (a line
every 5% when not on a terminal), prints the losses and times, writes the folder with
``save_pretrained`` plus ``training.json``, and scores the held-out prompts. Given the same seed,
thread count, torch version and CPU it writes the same weights, bit for bit: compare
``sha256sum DIR/*/*.safetensors``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Training is one long process that has the machine to itself: its OpenMP threads wait by
# spinning, not the passive waits that ``workers`` sets for processes that share the cores.
# A UNet step of the x4 recipe took 1.4 s with passive waits and 0.81 s spinning, 2 threads,
# the same bits either way. A value the user set (PASSIVE, beside other work) is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

from orchestrator.progress import Bar  # noqa: E402
from workers.task import PipelineCache  # noqa: E402
from workers.tiny import SHIPPED_TINY, SHIPPED_TINY_FLOW  # noqa: E402
from workers.tiny.evaluation import contact_sheet, evaluate  # noqa: E402
from workers.tiny.flow_training import FlowTrainConfig, FlowTrainReport, train_flow  # noqa: E402
from workers.tiny.training import TrainConfig, TrainReport, train, windows  # noqa: E402

RECIPES: dict[str, tuple[type[Any], Path]] = {
    "unet": (TrainConfig, SHIPPED_TINY),
    "flow": (FlowTrainConfig, SHIPPED_TINY_FLOW),
}


def overrides(ap: argparse.ArgumentParser, config: type[Any], items: list[str]) -> dict[str, Any]:
    """``--set NAME=VALUE`` options as the recipe's config fields (lists become tuples)."""
    names = {f.name for f in dataclasses.fields(config)} - {"seed", "threads"}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in names:
            ap.error(
                f"--set {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}"
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            ap.error(f"--set {item!r}: {text!r} is not a JSON value (write null, 500, [32,64])")
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="unet",
        help="unet: the tiny Stable Diffusion; flow: the tiny SD3-style flow model (tiny-flow)",
    )
    ap.add_argument("--out", type=Path, help="folder to write (replaced; default: the shipped one)")
    ap.add_argument("--seed", type=int, help="the recipe's seed (default: the shipped one's)")
    ap.add_argument("--threads", type=int, default=TrainConfig.threads)
    ap.add_argument("--scale", type=float, default=1.0, help="scale the step counts (smoke runs)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change one TrainConfig field (VALUE in JSON: 500, null, [32,64,64]); repeatable",
    )
    ap.add_argument(
        "--sheet", type=Path, help="also save the held-out images as one PNG (a contact sheet)"
    )
    args = ap.parse_args()
    kind, shipped = RECIPES[args.recipe]
    args.out = args.out or shipped
    seed = {} if args.seed is None else {"seed": args.seed}
    try:
        config = kind(threads=args.threads, **seed, **overrides(ap, kind, args.set))
    except ValueError as e:
        ap.error(str(e))
    if args.scale != 1.0:
        config = config.scaled(args.scale)

    bars: dict[str, Bar] = {}
    losses: dict[str, str] = {}
    # Not a terminal (a log file, nohup, CI): a plain line every 5% of a phase instead of a bar.
    plain = not sys.stderr.isatty()
    started: dict[str, float] = {}

    def progress(phase: str, step: int, total: int, loss: float) -> None:
        if plain:
            t0 = started.setdefault(phase, time.perf_counter())
            if (step + 1) % max(1, total // 20) == 0 or step == total - 1:
                took = time.perf_counter() - t0
                left = took / (step + 1) * (total - step - 1)
                print(
                    f"{phase}: {step + 1}/{total} steps, loss {loss:.4f}, "
                    f"{took / 60:.1f} min, about {left / 60:.0f} min left",
                    file=sys.stderr,
                    flush=True,
                )
            return
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = Bar(phase, unit="steps")
        if step % 20 == 0 or step == total - 1:
            losses[phase] = f"loss {loss:.4f}"
        bar.update(step + 1, total, losses.get(phase, ""))
        if step == total - 1:
            bar.close()

    report: TrainReport | None = None
    flow_report: FlowTrainReport | None = None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".train-", dir=args.out.parent))
    try:
        if args.recipe == "unet":
            report = train(tmp, config, progress)
        else:
            flow_report = train_flow(tmp, config, progress)
        if args.out.exists():
            shutil.rmtree(args.out)
        tmp.chmod(0o755)  # mkdtemp makes it private; the model is for everyone on the machine
        tmp.rename(args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def tail(losses: list[tuple[int, float]], n: int = 100) -> float:
        last = [v for _, v in losses[-n:]]
        return sum(last) / len(last)

    if report is not None:
        print(f"VAE:  {config.vae_steps} steps, MSE (last 100 mean) {tail(report.vae_losses):.5f}")
        print(
            f"UNet: {config.unet_steps} steps, loss (last 100 mean) {tail(report.unet_losses):.5f}"
        )
        s = report.seconds
        print(
            f"time: VAE {s['vae']:.0f} s, UNet {s['unet']:.0f} s, total {s['total'] / 60:.1f} min"
        )
    if flow_report is not None:
        print(
            f"transformer: {config.steps} steps, loss (last 100 mean) {tail(flow_report.losses):.5f}"
        )
        print(f"  per 1000 steps: {[row[1] for row in windows(flow_report.losses, 1000)]}")
        print(f"time: {flow_report.seconds['transformer'] / 60:.1f} min")
    for f in sorted(args.out.glob("*/*.safetensors")):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        print(f"{f.relative_to(args.out)}  {f.stat().st_size / 1e6:.2f} MB  sha256 {digest}")
    print(f"saved {args.out}")

    # Prompt adherence on the held-out prompts (never trained on), through the worker's backend.
    backend, _ = PipelineCache(threads=config.threads).get(str(args.out))
    result = evaluate(backend)
    summary = result.summary()
    accuracy = ", ".join(f"{k} {v:.2f}" for k, v in summary["accuracy"].items())
    print(
        f"held-out adherence {summary['adherence']:.3f} ({summary['images']} prompts, 20 DPM++ steps)"
    )
    print(f"  by attribute: {accuracy}")
    record = json.loads((args.out / "training.json").read_text())
    record["held_out"] = summary
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    if args.sheet:
        contact_sheet(result.images).save(args.sheet)
        print(f"contact sheet {args.sheet}")


if __name__ == "__main__":
    main()
