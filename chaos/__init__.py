"""Failure experiments against a real Keel, PostgreSQL and Redis, written as data in
experiments/*.json and run by runner.py on the test kit: `python -m chaos [names...]`
(`./scripts/chaos.sh`)."""
