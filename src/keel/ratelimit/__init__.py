"""Per-client rate limits: GCRA policies grouped in plans, decided atomically for all of a
request's policies, in process or on Redis, failing open to a bounded local limiter."""
