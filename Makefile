# Every target creates what it needs: a fresh machine needs only Python >= 3.11.
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
RUN := $(UV) run --frozen --no-sync

.PHONY: help env test lint format demo bench chaos dashboard sync-rules clean

help:
	@echo "make demo   - run the daemon end to end on local stand-ins (broker, Postgres, sandbox)"
	@echo "make test   - run the whole test suite (starts and stops everything it needs)"
	@echo "make lint   - ruff, ruff format --check, mypy --strict"
	@echo "make bench  - the benchmarks under bench/"
	@echo "make chaos  - every fault scenario and the hostile-input corpus, and their table"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# uv installs exactly what uv.lock pins; --frozen fails instead of silently re-resolving.
env: $(UV)
	$(UV) sync --frozen --quiet

# The fixtures start tansu, Postgres and the sandbox as children of pytest and stop them at the
# end; scripts/run-clean reaps the whole process group even if pytest is killed or interrupted.
test: env
	$(RUN) python scripts/run_clean.py -- python -m pytest $(PYTEST_ARGS)

lint: env
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	$(RUN) python -m devtools.dashboard --check

format: env
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

demo: env
	$(RUN) python scripts/run_clean.py -- python -m devtools.demo $(DEMO_ARGS)

bench: env
	$(RUN) python scripts/run_clean.py -- python -m bench $(BENCH_ARGS)

# The whole chaos suite (the normal test run has its short form); prints the table that
# docs/reliability.md keeps. About ten minutes.
chaos: env
	PIVOTAL_SYNC_TEST_CHAOS=full $(RUN) python scripts/run_clean.py -- python -m pytest tests/chaos $(PYTEST_ARGS)

# The dashboard is generated: edit devtools/dashboard.py, then run this.
dashboard: env
	$(RUN) python -m devtools.dashboard

# The chart ships a byte-identical copy of the alert rules (a test checks it).
sync-rules:
	cp deploy/prometheus/alerts.yaml helm/pivotal-sync/files/prometheus/alerts.yaml

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .hypothesis .run
