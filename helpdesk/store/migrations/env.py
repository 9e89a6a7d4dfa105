"""Alembic environment: runs our migrations on the engine the caller passes in."""

from alembic import context

from helpdesk.store import schema
from helpdesk.store.models import Base
from helpdesk.store.search import include_object

config = context.config
# The indexes with PostgreSQL options are declared only where the whole schema is
# compared or created: declaring them costs every other command ~25 ms.
schema.dialect_indexes()
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:  # `alembic` run by hand: take the URL from the ini file
        from helpdesk.store.db import make_engine

        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            # The full-text index is engine-specific and lives outside the models.
            include_object=include_object,
            # `helpdesk db upgrade` moves its progress bar after each migration.
            on_version_apply=config.attributes.get("on_version_apply"),
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
