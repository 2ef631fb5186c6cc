"""The schema revision this code needs, without importing Alembic (and SQLAlchemy): what a
serving process checks its database against at start-up (keel.bootstrap.core). Alembic is for
`keel migrate`; importing it cost a serving process's cold start about 270 ms. A new migration
must set this to its revision: tests/unit/test_migration_head.py compares it with Alembic's head."""

HEAD_REVISION = "0011"
