"""The personal-data lifecycle: erasure sagas (one row each, a step done = its timestamp set),
the tombstones erased or purged profiles leave, and the acknowledgements of erased events that
webhook endpoints holding personal data (`webhook_endpoints.holds_personal_data`, 0005) owe.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "profile_erasures",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("profile_id", sa.Text(), nullable=False, unique=True),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_at", _TIME, nullable=False),
        sa.Column("give_up_at", _TIME, nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("data_removed_at", _TIME),
        sa.Column("erased_version", sa.Integer()),
        sa.Column("caches_dropped_at", _TIME),
        sa.Column("event_id", sa.Text()),
        sa.Column("event_written_at", _TIME),
        sa.Column("holders_recorded_at", _TIME),
        sa.Column("acknowledged_at", _TIME),
        sa.Column("finished_at", _TIME),
        sa.Column("lease_holder", sa.Text()),
        sa.Column("lease_until", _TIME),
    )
    # The runners' scan: only sagas with steps left.
    op.create_index(
        "ix_profile_erasures_due",
        "profile_erasures",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'running'"),
        sqlite_where=sa.text("state = 'running'"),
    )
    op.create_table(
        "profile_tombstones",
        sa.Column("profile_id", sa.Text(), primary_key=True),
        sa.Column("removed_at", _TIME, nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
    )
    op.create_table(
        "erasure_acknowledgements",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("expected_at", _TIME, nullable=False),
        sa.Column("acknowledged_at", _TIME),
        sa.PrimaryKeyConstraint("event_id", "holder"),
    )
    # The retention purge's scan: soft-deleted profiles by deletion time.
    op.create_index(
        "ix_profiles_deleted_at",
        "profiles",
        ["deleted_at"],
        postgresql_where=sa.text("deleted_at IS NOT NULL"),
        sqlite_where=sa.text("deleted_at IS NOT NULL"),
    )


def downgrade() -> None:
    # The tombstones and saga records go with their tables; the personal data they stand for is
    # gone either way (a downgrade never brings erased data back).
    op.drop_index("ix_profiles_deleted_at", table_name="profiles")
    op.drop_table("erasure_acknowledgements")
    op.drop_table("profile_tombstones")
    op.drop_index("ix_profile_erasures_due", table_name="profile_erasures")
    op.drop_table("profile_erasures")
