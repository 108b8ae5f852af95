"""Engine and session factory. The URL comes from Settings; nothing here is global mutable state
beyond the cached engine per URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per database URL per process."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(
            url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args={"connect_timeout": 5}
        )
    return engine


def session_factory(url: str) -> sessionmaker[Session]:
    return _factory(get_engine(url))


@lru_cache(maxsize=8)
def _factory(engine: Engine) -> sessionmaker[Session]:
    # One per engine: each ``sessionmaker`` makes a new Session subclass whose event dispatch SQLAlchemy
    # builds again on first use (about 15 % of a status poll's CPU when made per request).
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(url: str) -> None:
    """Raise if the database cannot answer ``SELECT 1``."""
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))
