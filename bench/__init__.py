"""Benchmarks built on the test kit (testkit/); see README.md. Each script runs on its own:
`python bench/<name>.py --help`."""
