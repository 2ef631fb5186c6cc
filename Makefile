# Shortcuts; the scripts are the source of truth (README).
.PHONY: run test bench proto
run:
	./scripts/run.sh
test:
	./scripts/test.sh
bench:
	./scripts/setup.sh dev && .venv/bin/python bench/rest_read.py
proto:
	./scripts/generate-proto.sh

.PHONY: graphql-schema
graphql-schema:  # regenerate contracts/graphql/keel.graphql (a test fails when it is out of date)
	.venv/bin/python -m keel.api.graphql.export_sdl
