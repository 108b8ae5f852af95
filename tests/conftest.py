"""Shared fixtures: isolated settings per test, a throwaway PostgreSQL database, a Redis DB."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Tests start several processes that each run torch (the test itself, `dualseg worker`, …). With torch's
# default of one OpenMP thread per core they oversubscribe a small machine, and spinning OpenMP barriers
# then make every forward pass 10–20× slower (measured here). One thread per process keeps tests fast;
# child processes inherit it. Set before any test module imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

IN_CI = os.environ.get("CI") == "true"
PG_ADMIN_URL = os.environ.get("DUALSEG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DUALSEG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _unavailable(what: str, exc: Exception) -> None:
    msg = f"{what} not reachable ({type(exc).__name__}: {exc})"
    if IN_CI:
        pytest.fail(msg + " — CI must provide it (see scripts/services.sh)")
    pytest.skip(msg)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own data dir and no DUALSEG_ settings leaking from the shell."""
    for key in list(os.environ):
        if key.startswith("DUALSEG_") and not key.startswith("DUALSEG_TEST_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DUALSEG_DATA_DIR", str(tmp_path / "var"))
    from backend.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def create_database(prefix: str = "dualseg_test") -> tuple[str, Callable[[], None]]:
    """A fresh PostgreSQL database: (URL, drop function). Skips (fails in CI) when PostgreSQL is down."""
    import sqlalchemy

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT",
                                         connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001
        _unavailable("PostgreSQL", exc)

    def drop() -> None:
        from backend.db import get_engine

        get_engine.cache_clear()
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.dispose()

    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    url, drop = create_database()
    yield url
    drop()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number reserved for tests, flushed before and after."""
    redis = pytest.importorskip("redis")
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis", exc)
    yield REDIS_URL
    client.flushdb()
    client.close()
