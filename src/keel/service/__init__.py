"""Use cases and the ports they need. No web framework and no database driver is imported here."""
