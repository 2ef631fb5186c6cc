"""Webhooks: registered endpoints, one delivery row per event and endpoint (its state, attempts
and schedule: a restarted process resumes from it), and the outbox's fan-out mark.

`event_outbox.fanned_out_at` marks the events already turned into deliveries, the way
`published_at` marks what the relay published: a cursor on `seq` would skip an event whose
transaction committed after a later `seq` (PostgreSQL). Events already in the outbox are marked
as fanned out: endpoints registered from now on do not receive the history anyway.

`webhook_deliveries.payload` holds the CloudEvent sent (and `subject` what it is about), so a
dead letter stays replayable after the outbox pruned its event; erasure must scrub it by
`subject` like the outbox's payloads.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("event_outbox", sa.Column("fanned_out_at", _TIME))
    op.execute("UPDATE event_outbox SET fanned_out_at = time")
    op.create_index(
        "ix_event_outbox_not_fanned_out",
        "event_outbox",
        ["seq"],
        postgresql_where=sa.text("fanned_out_at IS NULL"),
        sqlite_where=sa.text("fanned_out_at IS NULL"),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", sa.Text(), nullable=False),  # JSON array; empty: every type
        sa.Column("holds_personal_data", sa.Boolean(), nullable=False),
        sa.Column("sealed_secret", sa.Text(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column(
            "endpoint_id",
            sa.Text(),
            sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TIME),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("last_attempt_at", _TIME),
        sa.Column("last_status", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        sa.Column("finished_at", _TIME),
        sa.UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
    )
    # The dispatcher's scan: what is due, per endpoint.
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["endpoint_id", "next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
        sqlite_where=sa.text("state = 'pending'"),
    )
    # Dead letters of an endpoint, pruning of delivered rows.
    op.create_index(
        "ix_webhook_deliveries_finished", "webhook_deliveries", ["state", "endpoint_id", "finished_at"]
    )
    op.create_index("ix_webhook_deliveries_subject", "webhook_deliveries", ["subject"])


def downgrade() -> None:
    # Pending deliveries and dead letters are lost with the tables: an operator rolling back
    # accepts that those endpoints miss them.
    op.drop_index("ix_webhook_deliveries_subject", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_finished", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_event_outbox_not_fanned_out", table_name="event_outbox")
    # Plain ALTER TABLE on both (SQLite 3.35+), not a batch rebuild of the outbox.
    op.execute("ALTER TABLE event_outbox DROP COLUMN fanned_out_at")
