"""What each optional part of the install brings, and the one-line refusal when it is missing.

The base install is the control plane. A command that needs more asks for its extra before it
starts (``require``), and ``orchestrate`` turns a missing package that reached the top into the
same sentence (``extra_for``), so no command fails with an import traceback or, worse, fails
every job one by one. The packages are pyproject.toml's extras, by the names they are imported
as (a test keeps the two in step).
"""

from __future__ import annotations

import importlib.util

from contract.errors import UsageError

DISTRIBUTION = "orchestrate-sd"

# extra -> top-level modules it installs, in the order they are named when missing.
EXTRAS: dict[str, tuple[str, ...]] = {
    "diffusers": (
        "torch",
        "diffusers",
        "transformers",
        "tokenizers",
        "accelerate",
        "huggingface_hub",
        "safetensors",
        "numpy",
        "PIL",
        "scipy",
    ),
    "coreml": ("coremltools", "sklearn"),
    "parquet": ("pyarrow",),
}
# An extra that includes others needs theirs too.
INCLUDES: dict[str, tuple[str, ...]] = {"coreml": ("diffusers",)}


def modules_of(extra: str) -> tuple[str, ...]:
    included = tuple(m for inner in INCLUDES.get(extra, ()) for m in modules_of(inner))
    return included + EXTRAS[extra]


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (found without importing them)."""
    return [m for m in modules_of(extra) if importlib.util.find_spec(m) is None]


def refusal(extra: str, modules: list[str], what: str | None = None) -> UsageError:
    needs = f"{what} needs" if what else "this command needs"
    named = ", ".join(modules) if len(modules) <= 3 else f"{modules[0]} and {len(modules) - 1} more"
    verb = "is" if len(modules) == 1 else "are"
    return UsageError(
        f"{needs} the {extra} extra ({named} {verb} not installed): "
        f"pip install '{DISTRIBUTION}[{extra}]'"
    )


def require(extra: str, what: str | None = None) -> None:
    """Refuse, in one sentence naming the extra, when a package of ``extra`` is missing.

    ``what`` names the command (``"orchestrate run"``); by default the running one.
    """
    absent = missing(extra)
    if absent:
        raise refusal(extra, absent, what or _command())


def extra_for(module: str | None) -> str | None:
    """The extra that installs ``module`` (a dotted name is judged by its top level)."""
    top = (module or "").partition(".")[0]
    return next((extra for extra, mods in EXTRAS.items() if top in mods), None)


def _command() -> str | None:
    import click

    ctx = click.get_current_context(silent=True)
    return f"`{ctx.command_path}`" if ctx is not None else None
