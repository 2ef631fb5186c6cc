"""The revision a serving process expects is Alembic's head: a new migration that does not
update keel.storage.migrations.head fails here, not at a node's start-up."""

from __future__ import annotations

import subprocess
import sys

from keel.storage.migrations.head import HEAD_REVISION
from keel.storage.migrations.runner import head_revision


def test_the_expected_revision_is_alembics_head() -> None:
    assert head_revision() == HEAD_REVISION


def test_serving_imports_neither_alembic_nor_sqlalchemy() -> None:
    """The composition root and the application, imported in a fresh interpreter, leave Alembic
    and SQLAlchemy out (they are `keel migrate`'s)."""
    probe = (
        "import sys, keel.bootstrap.lifecycle, keel.api.application;"
        "print(sorted(m for m in ('alembic', 'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
