#!/usr/bin/env python
"""Write docs/cli.md, the command-line reference, from the commands' own ``--help``.

    .venv/bin/python scripts/cli_reference.py           # after changing a command: rewrite it
    .venv/bin/python scripts/cli_reference.py --check   # exit 1 when docs/cli.md is stale

It walks the click command tree of ``orchestrate`` (groups and their subcommands, hidden ones
left out) in process and renders each help page at a fixed width, so the text depends on the
code alone, never on the terminal. ``tests/unit/test_docs.py`` fails when the checked-in file
is stale or misses a command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestrator.cli import main  # noqa: E402  (after the path)

REFERENCE = ROOT / "docs" / "cli.md"
PROGRAM = "orchestrate"
WIDTH = 100  # columns of every help page, whatever the terminal or $COLUMNS says
HEADER = f"""\
# Command-line reference

Every command's `--help`, as `{PROGRAM} COMMAND --help` prints it. Written by
`scripts/cli_reference.py` from the code; do not edit by hand (a test fails when it is stale).
Every option can also come from the environment variable its help names; a flag wins over the
environment.
"""


def commands(
    command: click.Command = main, name: str = PROGRAM, parent: click.Context | None = None
) -> Iterator[tuple[str, click.Context]]:
    """(full command path, its context) for ``command`` and every visible command below it,
    parents before children and siblings in name order."""
    ctx = click.Context(
        command,
        info_name=name,
        parent=parent,
        terminal_width=WIDTH,
        max_content_width=WIDTH,
        **command.context_settings,
    )
    yield ctx.command_path, ctx
    if isinstance(command, click.Group):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is not None and not sub.hidden:
                yield from commands(sub, sub_name, ctx)


def render() -> str:
    """The whole reference: one section per command, its help page verbatim."""
    parts = [HEADER]
    for path, ctx in commands():
        help_text = ctx.command.get_help(ctx).rstrip()
        parts.append(f"\n## {path}\n\n```text\n{help_text}\n```\n")
    return "".join(parts)


def main_(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare, do not write")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if REFERENCE.read_text(encoding="utf-8") != text:
            print(f"{REFERENCE} is stale: run scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    REFERENCE.write_text(text, encoding="utf-8")
    print(f"{REFERENCE}: {sum(1 for _ in commands())} commands")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
