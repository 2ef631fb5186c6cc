"""What an online migration between the profiles' layouts records (keel.storage.layout_migration).

- `storage_layout.generation`: counted up by every change of the record, so a node can say
  which record it follows;
- `storage_layout_progress`: where the migrator stands within a phase (the last id copied or
  compared, the last id the phase covers, counts), one row per record, kept apart from
  `storage_layout` itself: every write share-locks the record's row, and a batch updating that
  row would wait for them all;
- `storage_layout_nodes`: each serving node's last reading of the record (its generation, and
  when, in seconds since the epoch by the database's clock), which the migrator waits on before
  a layout stops being written.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("storage_layout", sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "storage_layout_progress",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("phase", sa.Text(), nullable=False),
        sa.Column("after_id", sa.Text()),
        sa.Column("through_id", sa.Text(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("mended", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "storage_layout_nodes",
        sa.Column("node_id", sa.Text(), primary_key=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    phase = (
        op.get_bind().execute(sa.text("SELECT phase FROM storage_layout WHERE name = 'profiles'")).scalar()
    )
    if phase not in (None, "steady"):
        raise RuntimeError(
            f"A migration between layouts is under way (phase {phase}): finish it or roll it back"
            " (`keel layout rollback`) before going below revision 0009."
        )
    op.drop_table("storage_layout_nodes")
    op.drop_table("storage_layout_progress")
    with op.batch_alter_table("storage_layout") as table:
        table.drop_column("generation")
