"""Alembic environment: runs against the connection ``orchestrate db upgrade`` hands over,
or against ``sqlalchemy.url`` / ``ORCHESTRATE_DB`` when run as ``alembic`` from the repo."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from orchestrator.database import database_url
from orchestrator.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite needs table rebuilds for most ALTERs
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
elif context.is_offline_mode():
    context.configure(
        url=database_url(config.get_main_option("sqlalchemy.url")), literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(database_url(config.get_main_option("sqlalchemy.url")))
    with engine.connect() as conn:
        run_migrations(conn)
    engine.dispose()
