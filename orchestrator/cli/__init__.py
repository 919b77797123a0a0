"""The ``orchestrate`` command. Each command parses, calls the library, prints.

Every option can also come from an environment variable (``--help`` names it):
``ORCHESTRATE_DB``, ``ORCHESTRATE_OUTPUT``, ``ORCHESTRATE_REDIS_URL``, and
``ORCHESTRATE_<COMMAND>_<OPTION>`` for the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from contract.errors import ManifestError, OrchestratorError
from orchestrator.cli import (  # they register on main
    control,
    dashboard,
    dataset,
    distributed,
    jobs,
    judge,
    local,
    model,
    presets,
)
from orchestrator.cli.common import main, print_manifest_error

_ = (control, dashboard, dataset, distributed, jobs, judge, local, model, presets)


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point: library errors become clean messages and exit codes, never tracebacks
    (the codes are on the errors: ``contract.errors``)."""
    try:
        main.main(args=argv, prog_name="orchestrate", standalone_mode=False)
    except ManifestError as exc:
        print_manifest_error(exc)
        sys.exit(exc.exit_code)
    except OrchestratorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # last: only what the clauses above did not take
        foreign = _foreign_error(exc)
        if foreign is None:
            raise
        click.echo(f"error: {foreign.args[0]}", err=True)
        sys.exit(foreign.exit_code)


def _foreign_error(exc: Exception) -> OrchestratorError | None:
    """Errors of the database and Redis drivers that reached the top, as the project's own
    (the engine translates a locked or full database where it happens; this catches the rest),
    and a package of an extra that is not installed, as the extra to install."""
    import redis
    from sqlalchemy.exc import SQLAlchemyError

    from contract.errors import DatabaseError, RedisUnavailable
    from orchestrator import extras

    if isinstance(exc, ModuleNotFoundError) and (extra := extras.extra_for(exc.name)):
        return extras.refusal(extra, [str(exc.name).partition(".")[0]])
    if isinstance(exc, SQLAlchemyError):
        return DatabaseError(f"the job database failed: {getattr(exc, 'orig', None) or exc}")
    if isinstance(exc, redis.exceptions.RedisError):
        return RedisUnavailable(f"Redis failed: {exc}")
    return None


if __name__ == "__main__":
    cli()
