.PHONY: setup serve test
VENV ?= .venv

setup:
	bash setup.sh

serve: setup
	$(VENV)/bin/python -m common.service

test:
	bash setup.sh --test
	$(VENV)/bin/python -m pytest -v tests
