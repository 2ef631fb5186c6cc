"""`keel migrate`'s last step: record the configured layout, in the run that creates the record.

The layout record (`storage_layout`, migration 0008) is written by the `keel migrate` run that
creates it, and only while the database holds no profile: a fresh database takes the layout it
is migrated with. Later runs never change it: nodes may already serve that layout, with or
without profiles yet, and a run with another setting (a default one, from a CI job) would move
the record under them. They refuse instead, as a node configured otherwise refuses to start.
Moving profiles between layouts is a migration of its own, never a side effect of `keel migrate`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from keel.storage.layouts import RECORD_NAME, Layout, LayoutMismatch, Phase


def record_configured_layout(connection: Connection, configured: Layout, *, created: bool) -> None:
    """Make `configured` the recorded read layout when this run `created` the record and the
    database holds no profile; otherwise raise `LayoutMismatch` unless it is recorded already.
    A database below the layouts' revision records nothing and is left alone."""
    if not sa.inspect(connection).has_table("storage_layout"):
        return
    row = connection.execute(
        sa.text("SELECT read_layout, phase FROM storage_layout WHERE name = :name"), {"name": RECORD_NAME}
    ).one_or_none()
    if row is None:
        raise LayoutMismatch("The database has no layout record (storage_layout is empty); restore it first.")
    if (row[0], row[1]) == (configured.value, Phase.STEADY.value):
        return
    if not created:
        raise LayoutMismatch(
            f"The database keeps its profiles in the {row[0]} layout (phase {row[1]}); `keel migrate`"
            f" records a layout only when it creates the database's layout record, so it stays {row[0]}."
            f" Configure {row[0]} (KEEL_STORAGE_LAYOUT), or migrate the profiles to the other layout."
        )
    if connection.dialect.name == "postgresql":
        # No profile may be written between the check below and the record's change (a node of
        # an earlier version still serving the normalized tables, say) until this commits.
        connection.execute(sa.text("LOCK TABLE profiles, profile_documents IN SHARE MODE"))
    changed = connection.execute(
        sa.text(
            "UPDATE storage_layout SET read_layout = :layout WHERE name = :name AND phase = :steady"
            " AND NOT EXISTS (SELECT 1 FROM profiles) AND NOT EXISTS (SELECT 1 FROM profile_documents)"
        ),
        {"layout": configured.value, "name": RECORD_NAME, "steady": Phase.STEADY.value},
    )
    if changed.rowcount != 1:
        raise LayoutMismatch(
            f"The database keeps its profiles in the {row[0]} layout (phase {row[1]}); it cannot be"
            f" recorded as {configured} (KEEL_STORAGE_LAYOUT) while it holds profiles. Configure"
            f" {row[0]}, or migrate the profiles to the other layout."
        )
