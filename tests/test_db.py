"""Migrations on SQLite and PostgreSQL alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from keybroker import db
from tests.conftest import fresh_postgres

TABLES = {
    "users",
    "key_slots",
    "owned_objects",
    "passkeys",
    "sessions",
    "challenges",
    "vault_entries",
    "audit_events",
    "clients",
    "authorization_codes",
    "device_codes",
    "grants",
    "usage",
    "usage_days",
    "alembic_version",
}


def check_migrations(url: str) -> None:
    engine = db.make_engine(url)
    try:
        assert db.pending_migrations(engine)
        db.upgrade(engine)
        assert db.pending_migrations(engine) == []
        assert set(inspect(engine).get_table_names()) == TABLES
        budget = next(
            c for c in inspect(engine).get_columns("grants") if c["name"] == "budget_microusd"
        )
        assert "BIGINT" in str(budget["type"]).upper() or "INTEGER" in str(budget["type"]).upper()
        command.downgrade(db._alembic_config(engine), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        db.upgrade(engine)
        assert db.pending_migrations(engine) == []
    finally:
        engine.dispose()


def test_migrations_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    check_migrations(url)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


@pytest.mark.postgres
def test_migrations_on_postgresql() -> None:
    with fresh_postgres() as url:
        check_migrations(url)
        engine = db.make_engine(url)
        budget = next(
            c for c in inspect(engine).get_columns("grants") if c["name"] == "budget_microusd"
        )
        assert str(budget["type"]).upper() == "BIGINT"
        engine.dispose()
