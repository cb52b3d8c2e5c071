# make run   - install (first time), migrate, load demo data, then run the web server
#              (0.0.0.0:5000), the UDP discovery listener and the serial bridge together
# make demo  - the same plus simulated machines and customers (no hardware needed)
# make test  - install (first time) and run the whole test suite (both tiers)
# make test-fast - only the fast tier (in-process tests, plus the system tests of SQLite
#              behaviour): what CI runs on SQLite; `make test-system` the other tier alone
# make bench - the benchmark suite (bench/run.py; PostgreSQL and Redis on loopback, < 10 min
#              on 2 cores): a table, bench/results/latest.json and bench/results/latency.png
# make soak  - 10 minutes at the fleet target (bench/soak.py): every server process's memory
#              and connections sampled, a verdict per process, the accounting check
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What each command needs: running the server needs requirements/base.txt only (a Raspberry
# Pi need not carry the test and benchmark tools); tests, lint and benchmarks add dev.txt.
STAMP := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.dev-installed-stamp

.PHONY: run demo serve test test-fast test-system lint format migrate clean

PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check

$(STAMP): requirements/base.txt requirements/prod.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements/base.txt
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements/dev.txt
	$(PIP_INSTALL) -r requirements/dev.txt
	touch $(DEV_STAMP)

migrate: $(STAMP)
	$(BIN)/python manage.py migrate --noinput

run: migrate
	$(BIN)/python manage.py bootstrap
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -f Procfile

# Everything `make run` starts, plus two simulated WiFi machines, one simulated USB machine
# and simulated customers: watch them at /admin/ (or on the dashboard).
demo: migrate
	$(BIN)/python manage.py bootstrap --demo-fleet
	PATH="$(CURDIR)/$(BIN):$$PATH" PORT_WEB=$${PORT:-5000} $(BIN)/honcho start -f Procfile.demo

# Only the web server, e.g. when discovery, the bridge and the sweeper run as services of
# their own (without a sweeper, overdue vends never expire nor show as unconfirmed).
serve: migrate
	$(BIN)/python manage.py bootstrap
	$(BIN)/python manage.py serve

# The production topology natively on loopback (see docs/production.md): nginx with TLS on
# 8443 (self-signed), 8080 -> HTTPS, device port 5000, granian for HTTP (8001), manage.py
# serve for /ws/ (8002), discovery, bridge, sweeper and notifier, on PostgreSQL (DATABASE_URL, default
# .../vending_prod) and Redis (REDIS_URL).
.PHONY: prod-local
prod-local: $(STAMP)
	$(BIN)/python deploy/prod_local.py run

# Test tiers (docs/development.md): the system tier (marker `system`) starts processes and
# runs once in CI, on PostgreSQL; the fast tier is everything else and runs on both
# databases. DATABASE_URL picks the database (SQLite when unset); PYTEST_ARGS adds options.
test: $(DEV_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest -m "not system or sqlite" $(PYTEST_ARGS)

test-system: $(DEV_STAMP)
	$(BIN)/python -m pytest -m system $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Scratch databases bench_* on DATABASE_URL's PostgreSQL server (default
# postgres://postgres@127.0.0.1:5432) and Redis database 14 on REDIS_URL's server (default
# 127.0.0.1:6379). BENCH_ARGS passes options, e.g. BENCH_ARGS="--only vend_api".
.PHONY: bench bench-quick
bench: $(DEV_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The same scenarios, smaller (under 2 minutes): a smoke run, not figures to publish.
bench-quick: $(DEV_STAMP)
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

# The fleet target (1000 machines polling every 2 s, 20 vends/s) for 10 minutes on the
# production web tier (granian), sampled every 10 s: scratch database soak_* on 127.0.0.1:5432,
# Redis database 11. A table, bench/results/soak.json, exit 1 on growth or failed accounting.
# SOAK_ARGS passes options, e.g. SOAK_ARGS="--minutes 30 --server daphne".
.PHONY: soak soak-quick
soak: $(DEV_STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# One minute at 200 machines and 4 vends/s: proves the machinery, not figures to publish.
soak-quick: $(DEV_STAMP)
	$(BIN)/python bench/soak.py --minutes 1 --devices 200 --vend-rate 4 --out /tmp/soak-quick.json $(SOAK_ARGS)

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
