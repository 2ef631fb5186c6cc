"""Logs, metrics and traces: wired once by the composition root, before any feature."""
