"""End users: which profile each subject of the OpenID Connect issuer owns (`profile_subjects`),
one each way; the admin log indexed by subject (an erasure rewrites its profile's entries).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profile_subjects",
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("profile_id", sa.Text(), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "subject"),
    )
    op.create_index("profile_subjects_by_profile", "profile_subjects", ["profile_id"], unique=True)
    # An erasure finds the admin log's entries about its profile (their end user is erased).
    op.create_index("admin_audit_by_subject", "admin_audit", ["subject"])


def downgrade() -> None:
    op.drop_index("admin_audit_by_subject", table_name="admin_audit")
    op.drop_index("profile_subjects_by_profile", table_name="profile_subjects")
    op.drop_table("profile_subjects")
