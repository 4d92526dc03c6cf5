"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from roster.db import alembic_config, current_revision
from roster.models import Base


def test_migrations_match_the_models(engine: Engine) -> None:
    """`alembic check` fails when a model changed without a migration."""
    command.check(alembic_config(engine))
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    assert head is not None and current_revision(engine) == head
    assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
