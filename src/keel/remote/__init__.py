"""Adapters that implement the service port over the network: an edge's way to its core."""
