"""API keys store a verifier (a hash of the token's SHA-256), no longer the SHA-256 itself.

The SHA-256 of a token is what an edge sends to prove a caller's key: stored as it was, a copy
of the database was a set of working credentials. The verifier is computed from what was stored,
so every existing key keeps working.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keel.service.auth import key_verifier

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_keys = sa.table("api_keys", sa.column("id", sa.Text()), sa.column("secret_hash", sa.Text()))


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(_keys.c.id, _keys.c.secret_hash)).all()
    for key_id, digest in rows:
        connection.execute(
            _keys.update().where(_keys.c.id == key_id).values(secret_hash=key_verifier(digest))
        )
    # Keys are found by their verifier (see keel.service.auth.Authenticator._load).
    op.create_index("api_keys_by_verifier", "api_keys", ["secret_hash"], unique=True)


def downgrade() -> None:
    # A verifier cannot be turned back into the digest it was made from: going back would leave
    # every key unusable. Refuse instead, with the way out.
    raise RuntimeError(
        "Revision 0003 cannot be downgraded: API keys now store verifiers. Restore a backup taken "
        "before the upgrade, or downgrade and issue new keys (`keel keys create`)."
    )
