# The two commands of the README: `make up` runs the workspace here, `make test` runs every test;
# `make bench` runs the side-by-side benchmarks (docs/performance.md).
.PHONY: up test bench setup setup-test images lint-docs

up: setup
	.venv/bin/gen3-workspace up $(ARGS)

test: setup-test
	.venv/bin/python -m pytest $(PYTEST_ARGS)

bench: setup-test
	.venv/bin/python -m benchmarks.run $(BENCH_ARGS)

setup:
	scripts/setup.sh run

setup-test:
	scripts/setup.sh test

images:
	images/build.sh
