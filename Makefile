.PHONY: setup serve test test-fast
VENV ?= .venv

setup:
	bash setup.sh

serve: setup
	$(VENV)/bin/python -m common.service

test:
	bash setup.sh --test
	$(VENV)/bin/python -m pytest -v tests/unit
	$(VENV)/bin/python -m pytest -v tests --ignore=tests/unit

# Unit tests of single modules, no vLLM engine: seconds.
test-fast:
	$(VENV)/bin/python -m pytest -q tests/unit
