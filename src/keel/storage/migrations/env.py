"""Alembic environment: migrations only. The request path never goes through SQLAlchemy."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from keel.storage.layouts import Layout
from keel.storage.migrations.layout_record import record_configured_layout


def _run(connection: Connection) -> None:
    # Whether this run creates the layout record (see `record_configured_layout`).
    had_record = sa.inspect(connection).has_table("storage_layout")
    connection.commit()  # the inspection's implicit transaction: Alembic begins its own
    context.configure(connection=connection, target_metadata=None, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    layout: Layout | None = context.config.attributes.get("storage_layout")
    if layout is not None:
        # Its own transaction, after the schema's: a refusal leaves the schema migrated (and
        # this transaction rolled back when the connection closes).
        if connection.in_transaction():
            connection.commit()
        record_configured_layout(connection, layout, created=not had_record)
        connection.commit()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


asyncio.run(_run_async(context.config.attributes["sqlalchemy_url"]))
