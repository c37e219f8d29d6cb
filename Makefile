# `make test` is the README's test command: it installs what the tests need on a fresh machine
# (the package with its test extra, the test helpers of testing/, and two Debian data packages)
# and runs the suite.
PYTHON ?= python3

.PHONY: test test-deps

test: test-deps
	$(PYTHON) -m pytest

test-deps:
	bash scripts/install-test-data.sh
	$(PYTHON) -m pip install -q -e ".[test]" -e ./testing
