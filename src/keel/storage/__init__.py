"""Adapters for the storage ports: SQLite (embedded default) and PostgreSQL (production)."""
