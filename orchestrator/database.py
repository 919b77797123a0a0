"""The job database: its URL, an engine tuned for SQLite with several processes, and migrations."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from contract.errors import ConfigError, DatabaseBusy, DatabaseError, DatabaseFull

logger = logging.getLogger(__name__)

DEFAULT_DB = "./orchestrate.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# How long a writer waits for SQLite's write lock before it reports a busy database.
BUSY_TIMEOUT_MS = int(float(os.environ.get("ORCHESTRATE_BUSY_TIMEOUT", "30")) * 1000)


def database_url(value: str | None = None) -> str:
    """A SQLAlchemy URL from a path or URL (``ORCHESTRATE_DB`` when not given)."""
    value = value or os.environ.get("ORCHESTRATE_DB") or DEFAULT_DB
    if "://" not in value:
        return "sqlite:///" + str(Path(value).expanduser().absolute())
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ConfigError(f"ORCHESTRATE_DB / --db is not a database URL: {value!r}") from exc
    if url.get_backend_name() != "sqlite":
        raise ConfigError(
            f"only SQLite databases are supported, got {url.get_backend_name()!r} in {value!r}"
        )
    return value


def sqlite_path(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets status readers run while a worker writes; the busy timeout makes writers queue
    # instead of failing; NORMAL sync is durable in WAL mode except for the last commit on power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# sqlite3 result codes (the primary code is the low byte of an extended one)
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR, _SQLITE_FULL = 5, 6, 10, 13


def translate_error(exc: BaseException, where: str) -> BaseException | None:
    """The project's error for a DB-API error, or None to keep the original: a locked database
    and a full disk are states a caller can wait out, so they get their own classes."""
    import sqlite3

    if not isinstance(exc, sqlite3.OperationalError):
        return None
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    text_ = str(exc)
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text_:
        return DatabaseBusy(
            f"the job database {where} is busy: another process held its write lock for "
            f"more than {BUSY_TIMEOUT_MS // 1000} s; try again"
        )
    if code == _SQLITE_FULL or "full" in text_:
        return DatabaseFull(f"the disk holding the job database {where} is full; free some space")
    if code == _SQLITE_IOERR or "disk I/O error" in text_:
        return DatabaseFull(
            f"the job database {where} could not be written (disk I/O error: a full disk, a "
            "file-size limit or a failing disk)"
        )
    return None


def make_engine(url: str) -> Engine:
    """An engine whose connections are in driver autocommit: the store issues its own
    ``BEGIN IMMEDIATE`` for writes, so two writers queue on the busy timeout instead of one
    failing with SQLITE_BUSY when it upgrades a read lock."""
    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise ConfigError(f"the database's folder does not exist: {path.parent}")
    engine = create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )
    event.listen(engine, "connect", _on_connect)
    where = str(path) if path is not None else url

    def _handle_error(ctx: Any) -> None:
        mine = translate_error(ctx.original_exception, where)
        if mine is not None:
            raise mine from ctx.original_exception

    event.listen(engine, "handle_error", _handle_error)
    return engine


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_alembic_config(None)).walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Serialise migrations between processes started at the same moment."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    with open(str(path) + ".migrate.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def upgrade(url: str, revision: str = "head") -> str | None:
    """Bring the schema to ``revision``; return the revision it is at afterwards."""
    from alembic import command

    engine = create_engine(url)
    try:
        with _migration_lock(url), engine.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
        return current_revision(engine)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot migrate the database {url}: {exc}") from exc
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    engine = create_engine(url)
    try:
        with _migration_lock(url), engine.begin() as conn:
            command.downgrade(_alembic_config(conn), revision)
    finally:
        engine.dispose()


def open_engine(url: str, *, migrate: bool = True) -> Engine:
    """An engine on a database at the current schema, migrating it first when it is behind."""
    engine = make_engine(url)
    try:
        rev = current_revision(engine)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot open the database {url}: {exc}") from exc
    head = head_revision()
    if rev is not None and rev != head and rev not in known_revisions():
        raise DatabaseError(
            f"the database is at schema {rev}, which is newer than this orchestrate knows "
            f"(its newest is {head}); upgrade orchestrate to use it"
        )
    if rev != head:
        if not migrate:
            raise DatabaseError(
                f"the database is at schema {rev or 'none'}, not {head}; run `orchestrate db upgrade`"
            )
        logger.info(
            "migrating the database from %s to %s", rev, head, extra={"action": "db_upgrade"}
        )
        upgrade(url)
    return engine
