# `make test` is the README's test command: it installs what the tests need on a fresh machine
# (the package with its test extra, the test helpers of testing/, and two Debian data packages)
# and runs the suite.
PYTHON ?= python3
# Test files run in parallel worker processes (pytest-xdist), each file whole on one worker so
# that its module fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: test test-deps bench-check

test: test-deps
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The benchmark scripts' CPU modes, end to end (not part of `make test`).
bench-check: test-deps
	$(PYTHON) -m pytest -m bench

test-deps:
	bash scripts/install-test-data.sh
	$(PYTHON) -m pip install -q -e ".[test]" -e ./testing
