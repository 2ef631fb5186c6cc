"""Where each published event sits in the event stream (`event_outbox.stream_seq`, the JetStream
sequence its publish was acknowledged with), so that an erasure can delete the stream's copies of
a profile's events; and the erasure step that does it (`profile_erasures.stream_copies_erased_at`).
Events published before this revision have no position: their stream copies age out with the
stream (docs/privacy.md#not-covered). Also the W3C `traceparent` of the change that wrote an
event (`event_outbox.traceparent`, copied to each of its webhook deliveries), so that its publish
and deliveries join the change's trace.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("event_outbox", sa.Column("stream_seq", sa.BigInteger()))
    op.add_column("event_outbox", sa.Column("traceparent", sa.Text()))
    op.add_column("webhook_deliveries", sa.Column("traceparent", sa.Text()))
    op.add_column("profile_erasures", sa.Column("stream_copies_erased_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    # Plain ALTER TABLE on both (SQLite 3.35+), not a batch rebuild (as 0005's downgrade).
    op.execute("ALTER TABLE profile_erasures DROP COLUMN stream_copies_erased_at")
    op.execute("ALTER TABLE webhook_deliveries DROP COLUMN traceparent")
    op.execute("ALTER TABLE event_outbox DROP COLUMN traceparent")
    op.execute("ALTER TABLE event_outbox DROP COLUMN stream_seq")
