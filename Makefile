# The two commands of the README: `make up` runs the workspace here, `make test` runs every test.
.PHONY: up test setup setup-test images lint-docs

up: setup
	.venv/bin/gen3-workspace up $(ARGS)

test: setup-test
	.venv/bin/python -m pytest $(PYTEST_ARGS)

setup:
	scripts/setup.sh run

setup-test:
	scripts/setup.sh test

images:
	images/build.sh
