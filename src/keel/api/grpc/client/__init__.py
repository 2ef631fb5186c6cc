"""The service port over gRPC: what an edge runs on, its use cases executed by a core."""
