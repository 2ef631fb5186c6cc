"""The composition root: the one place that names concrete adapters and wires them together,
split by job (`protection`, `core`, `edge`, `container`, `lifecycle`). Nothing imports it but
the CLI (and tests, which wire the same process): the adapters declare the narrow protocols
they need of what it builds."""
