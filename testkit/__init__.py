"""The test kit: what tests, benchmarks (bench/) and chaos experiments (chaos/) share to run Keel
against real servers on loopback, and to load it, break it and check what it answered.

    servers/          throwaway PostgreSQL and Redis (one module per server: servers/<name>.py)
    processes.py      starting and stopping server processes; cleanup on errors, SIGINT, SIGTERM
    ports.py          free_port
    health.py         wait_healthy (a started Keel answers /healthz)
    percentile.py     nearest-rank percentiles
    seed.py           bench profiles written straight to PostgreSQL
    loadgen.py        an open-loop HTTP/1.1 load generator
    faultproxy.py     a fault-injecting TCP proxy
    process_faults.py stop, kill, pause and resume a process tree
    workload.py, history.py   a Jepsen-style write workload and the checker of its history

The test kit imports neither bench nor chaos (an import-linter contract holds it).
"""
