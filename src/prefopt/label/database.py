"""The label store's database: engines (SQLite in WAL mode, writers queuing at BEGIN IMMEDIATE,
readers never taking the write lock; or any SQLAlchemy URL), the file a SQLite store writes to,
and the Alembic migrations that make and upgrade the schema."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event, orm


def sqlite_file(url: str) -> Path | None:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def file_identity(path: Path | None) -> tuple[int, int] | None:
    """The file's device and inode (None when there is no file to watch, or it is gone)."""
    if path is None:
        return None
    try:
        found = path.stat()
    except FileNotFoundError:
        return (-1, -1)
    return found.st_dev, found.st_ino


def make_engine(url: str, writes: bool = True) -> sa.Engine:
    """An engine for the store; on SQLite, `writes` transactions take the write lock as they begin
    (BEGIN IMMEDIATE: writers queue at the start and never deadlock midway), read ones do not."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below opens transactions
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: commits survive a killed process
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")
            dbapi_connection.execute("PRAGMA foreign_keys=ON")
            dbapi_connection.execute("PRAGMA busy_timeout=60000")

        @event.listens_for(engine, "begin")
        def _begin(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def serialize(session: orm.Session) -> None:
    """Hand out items one at a time across processes (SQLite already does with BEGIN IMMEDIATE)."""
    if session.bind.dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(727001)"))


def upgrade(engine: sa.Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
