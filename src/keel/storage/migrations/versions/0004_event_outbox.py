"""The event outbox (every change's event, written in the change's transaction) and the relay's
lease (the one process that publishes the outbox at a time).

`seq` never goes back, also after pruning (AUTOINCREMENT on SQLite, an identity on PostgreSQL):
`keel events tail --from SEQ` and the relay rely on it. `data` (the payload) is a column of its
own so that erasure can later replace a profile's past payloads, found by `subject`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            primary_key=True,
        ),
        sa.Column("id", sa.Text(), nullable=False, unique=True),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("time", _TIME, nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("published_at", _TIME),
        sqlite_autoincrement=True,
    )
    # The relay's scan: only what is still to publish.
    op.create_index(
        "ix_event_outbox_unpublished",
        "event_outbox",
        ["seq"],
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    )
    op.create_index("ix_event_outbox_published_at", "event_outbox", ["published_at"])
    op.create_index("ix_event_outbox_subject", "event_outbox", ["subject", "seq"])
    op.create_table(
        "event_relay_lease",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
    )


def downgrade() -> None:
    # Events not yet published are lost with the table: an operator rolling back a release
    # accepts that consumers miss them (the changes themselves stay in the profile tables).
    op.drop_table("event_relay_lease")
    op.drop_index("ix_event_outbox_subject", table_name="event_outbox")
    op.drop_index("ix_event_outbox_published_at", table_name="event_outbox")
    op.drop_index("ix_event_outbox_unpublished", table_name="event_outbox")
    op.drop_table("event_outbox")
