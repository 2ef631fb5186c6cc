"""`keel migrate`'s last step: record the configured layout on a database that holds no profile.

A database that holds profiles keeps the layout it records: moving them is a migration between
layouts, never a side effect of `keel migrate`, and a node configured otherwise refuses to start.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from keel.storage.layouts import RECORD_NAME, Layout, LayoutMismatch, Phase


def record_configured_layout(connection: Connection, configured: Layout) -> None:
    """Make `configured` the recorded read layout if the database holds no profile in either
    layout; raise `LayoutMismatch` if it holds profiles in the other one. A database below the
    layouts' revision records nothing and is left alone."""
    if not sa.inspect(connection).has_table("storage_layout"):
        return
    row = connection.execute(
        sa.text("SELECT read_layout, phase FROM storage_layout WHERE name = :name"), {"name": RECORD_NAME}
    ).one()
    if (row[0], row[1]) == (configured.value, Phase.STEADY.value):
        return
    holds_profiles = connection.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM profiles) OR EXISTS (SELECT 1 FROM profile_documents)")
    ).scalar_one()
    if holds_profiles or row[1] != Phase.STEADY.value:
        raise LayoutMismatch(
            f"The database keeps its profiles in the {row[0]} layout (phase {row[1]}); it cannot be"
            f" recorded as {configured} (KEEL_STORAGE_LAYOUT) while it holds profiles. Configure"
            f" {row[0]}, or migrate the profiles to the other layout."
        )
    connection.execute(
        sa.text("UPDATE storage_layout SET read_layout = :layout WHERE name = :name"),
        {"layout": configured.value, "name": RECORD_NAME},
    )
