"""The document layout of profiles, beside the normalized one, and the record of which is read.

`profile_documents`: one row per profile, the aggregate as one document (PostgreSQL jsonb,
SQLite JSON text); version and deleted_at as columns of their own. The handle is unique among
live profiles by a partial unique index on the document's handle (an expression index);
addresses by `profile_document_emails`, which holds the normalized addresses of live profiles
only, its primary key being the address. Both are written in the profile's own transaction.

`storage_layout`: one row, `profiles`, naming the layout reads go to and the migration phase
(see keel.storage.layouts). Every database migrated so far keeps its profiles normalized, so
that is the row written here; `keel migrate` records the configured layout instead on a
database that holds no profile yet.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "profile_documents",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("document", _JSON, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("deleted_at", _TIME),
    )
    # The statements' handle filter must be written exactly as this expression to use the index.
    handle = (
        "(document->>'handle')"
        if op.get_bind().dialect.name == "postgresql"
        else "json_extract(document, '$.handle')"
    )
    op.execute(
        "CREATE UNIQUE INDEX ux_profile_documents_live_handle"
        f" ON profile_documents ({handle}) WHERE deleted_at IS NULL"
    )
    op.create_table(
        "profile_document_emails",
        sa.Column("address_normalized", sa.Text(), nullable=False),
        sa.Column(
            "profile_id",
            sa.Text(),
            sa.ForeignKey("profile_documents.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("address_normalized", name="ux_profile_document_emails_address"),
    )
    op.create_index("ix_profile_document_emails_profile_id", "profile_document_emails", ["profile_id"])
    # What ix_profiles_deleted_at (0006) is to the normalized layout: the erasure of profiles
    # soft-deleted long enough finds them by it.
    op.create_index(
        "ix_profile_documents_deleted_at",
        "profile_documents",
        ["deleted_at"],
        postgresql_where=sa.text("deleted_at IS NOT NULL"),
        sqlite_where=sa.text("deleted_at IS NOT NULL"),
    )
    layouts = op.create_table(
        "storage_layout",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("read_layout", sa.Text(), nullable=False),
        sa.Column("phase", sa.Text(), nullable=False),
        sa.Column("target_layout", sa.Text()),
    )
    op.bulk_insert(
        layouts, [{"name": "profiles", "read_layout": "normalized", "phase": "steady", "target_layout": None}]
    )


def downgrade() -> None:
    # The document tables may be the only copy of the profiles: refuse rather than drop them,
    # whatever the record says (the data decides: a record can be wrong).
    bind = op.get_bind()
    recorded = bind.execute(
        sa.text("SELECT read_layout, phase FROM storage_layout WHERE name = 'profiles'")
    ).first()
    if recorded is None or tuple(recorded) != ("normalized", "steady"):
        where = "no layout record" if recorded is None else f"the {recorded[0]} layout (phase {recorded[1]})"
        raise RuntimeError(
            f"The profiles are read from {where}: going below revision 0008 would drop them."
            " Migrate them to the normalized layout first."
        )
    if bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM profile_documents)")).scalar():
        raise RuntimeError(
            "profile_documents holds profiles although the normalized layout is recorded: going below"
            " revision 0008 would drop them. Move them to the normalized tables first."
        )
    op.drop_table("storage_layout")
    op.drop_table("profile_document_emails")
    op.drop_table("profile_documents")
