"""Alembic environment: runs migrations on the engine handed over by roster.db."""

from alembic import context

from roster.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    from roster.db import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
