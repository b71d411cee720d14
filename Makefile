.PHONY: setup serve stop status test test-fast
VENV ?= .venv

setup:
	@bash setup.sh

serve: setup
	@$(VENV)/bin/python -m common.service

# From another shell, on the service `make serve` started (run_dir from conf/server.yml).
stop:
	@$(VENV)/bin/python -m common.service stop

status:
	@$(VENV)/bin/python -m common.service status

test:
	bash setup.sh --test
	$(VENV)/bin/python -m pytest -v tests/unit
	$(VENV)/bin/python -m pytest -v tests --ignore=tests/unit

# Unit tests of single modules, no vLLM engine: seconds.
test-fast:
	$(VENV)/bin/python -m pytest -q tests/unit
