"""Rate-limit plans on API keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: existing keys join the standard plan, and the ALTER needs no rewrite.
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("plan", sa.Text(), nullable=False, server_default="standard"))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("plan")
