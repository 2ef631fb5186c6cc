"""API keys managed over the API: an expiry per key (`api_keys.expires_at`), the secret a
rotation replaced, still accepted until its own expiry (`previous_secret_hash`, a verifier like
`secret_hash`, unique, and `previous_expires_at`), and the record of every admin action on keys
(`admin_audit`: who, what, when; never a secret).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("expires_at", _TIME))
    op.add_column("api_keys", sa.Column("previous_secret_hash", sa.Text()))
    op.add_column("api_keys", sa.Column("previous_expires_at", _TIME))
    op.create_index("api_keys_by_previous_verifier", "api_keys", ["previous_secret_hash"], unique=True)
    op.create_table(
        "admin_audit",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("admin_audit")
    op.drop_index("api_keys_by_previous_verifier", table_name="api_keys")
    # Plain ALTER TABLE on both (SQLite 3.35+), as 0007's downgrade.
    op.execute("ALTER TABLE api_keys DROP COLUMN previous_expires_at")
    op.execute("ALTER TABLE api_keys DROP COLUMN previous_secret_hash")
    op.execute("ALTER TABLE api_keys DROP COLUMN expires_at")
