.PHONY: setup serve stop status test
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
	$(VENV)/bin/python -m pytest -v tests
