"""Alembic environment: runs on the connection that nova.storage.db hands over."""

from __future__ import annotations

from alembic import context

from nova.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` CLI use during development: an offline SQL script
    context.configure(url=context.config.get_main_option("sqlalchemy.url"),
                      target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
