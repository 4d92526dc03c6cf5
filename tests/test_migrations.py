"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from roster.db import alembic_config, current_revision, make_engine, upgrade
from roster.models import Base


def test_migrations_match_the_models(engine: Engine) -> None:
    """`alembic check` fails when a model changed without a migration."""
    command.check(alembic_config(engine))
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    assert head is not None and current_revision(engine) == head
    assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)


def test_a_roster_in_use_upgrades_to_the_head(tmp_path: Path) -> None:
    """Migrations 0005 to 0010 copied and dropped the domain table on SQLite (batch
    mode) to add columns, which SQLite refuses once people and events refer to a domain:
    an operator's `db upgrade` of a roster in use failed. Upgrading from the last
    revision before the mail path, with rows everywhere, reaches the head."""
    engine = make_engine(f"sqlite:///{tmp_path / 'roster.db'}", create=True)
    try:
        upgrade(engine, "0004")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO domain (name, continuity_active, coverage_mode,"
                    " emergency_password_enabled, primary_port, primary_tls,"
                    " failover_automatic, probe_interval_seconds, failures_before_failover,"
                    " people_version, created_at) VALUES ('acme.test', 1, 'all', 1, 25,"
                    " 'starttls', 1, 60, 3, 0, '2026-01-01 00:00:00')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO person (domain_id, source, external_id, dn, mail,"
                    " display_name, disabled, session_generation, created_at, updated_at)"
                    " VALUES (1, 'corp', 'ana', 'uid=ana', 'ana@acme.test', 'Ana', 0, 0,"
                    " '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO continuity_event (domain_id, started_at, reason)"
                    " VALUES (1, '2026-01-01 00:00:00', 'an old outage')"
                )
            )
        upgrade(engine)
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        assert current_revision(engine) == head
        with engine.connect() as connection:
            assert connection.execute(text("SELECT name, recover_after FROM domain")).all() == [
                ("acme.test", 3)
            ]
            assert connection.scalar(text("SELECT count(*) FROM person")) == 1
    finally:
        engine.dispose()
