"""Chaos experiments against a running Keel: `python -m devtools.chaos` (see README)."""
