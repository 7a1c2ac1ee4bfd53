# surge: `make` (or `make help`) lists what there is to do.
.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
MAKEFLAGS += --no-print-directory

VENV := .venv
PY := $(VENV)/bin/python
# down/status/clean must work even before (or without) `make deps`: stack's stop path is stdlib.
PY_ANY = $(if $(wildcard $(PY)),$(PY),python3)

.PHONY: help deps up down status seed test lint bench clean

help: ## List the targets
	@echo "usage: make <target>   (env: SURGE_STUDENTS, SURGE_BOOKINGS, SURGE_REPLICAS)"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-8s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

deps: ## Install the servers (apt, if missing) and .venv (when pyproject.toml changed)
	@scripts/install.sh

up: deps ## Start Postgres, Redis, seed them, start the API on http://127.0.0.1:8080
	@$(PY) -m stack up

down: ## Stop what `make up` started (and nothing else)
	@$(PY_ANY) -m stack down

status: ## Show what `make up` started and whether it answers
	@$(PY_ANY) -m stack status

seed: deps ## (Re)seed the running stores; SEED_ARGS passes options to the seeder
	@$(VENV)/bin/surge-seed $(SEED_ARGS)

test: deps ## Run the test suite against real Postgres and Redis (started by the tests)
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: deps ## ruff check and ruff format --check
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

bench: deps ## Run the benchmark scripts in bench/ (reports go to docs/benchmarks/)
	@ran=0; for script in bench/*.py; do \
		[ -f "$$script" ] && grep -q '__name__ == "__main__"' "$$script" || continue; \
		echo "== $$script"; $(PY) "$$script"; ran=1; \
	done; [ $$ran = 1 ] || echo "no benchmark scripts in bench/ yet"

clean: ## Stop the stack, delete .run/ (data, logs) and caches; keeps .venv
	@$(PY_ANY) -m stack down
	rm -rf .run .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
