# Shortcuts; the scripts are the source of truth (README).
.PHONY: run test bench
run:
	./scripts/run.sh
test:
	./scripts/test.sh
bench:
	./scripts/setup.sh dev && .venv/bin/python bench/rest_read.py
