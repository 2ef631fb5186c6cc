"""Adapters for the profile read cache: the in-process store and cross-process invalidation."""
