.PHONY: setup serve stop status reload restart-engines test test-fast
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

# The frontends read their tenants again (docs/tenants.md).
reload:
	@$(VENV)/bin/python -m common.service reload

# Drains and restarts the running service's engines one at a time, each serving again before the next
# goes; applies a changed engine_args (docs/operations.md).
restart-engines:
	@$(VENV)/bin/python -m common.service restart-engines

# tests/unit starts no process (the frontend's tests run on a harness without vLLM); every file
# outside it, *_e2e.py, starts real services. The end-to-end run ends with the vLLM engines it
# started, against tests/engine_budget.py's budget.
test:
	bash setup.sh --test
	$(VENV)/bin/python -m pytest -v --durations=15 tests/unit
	$(VENV)/bin/python -m pytest -v --durations=30 tests --ignore=tests/unit

# tests/unit alone, no vLLM engine: under a minute.
test-fast:
	$(VENV)/bin/python -m pytest -q --durations=5 tests/unit
