# Omni Hub — the two commands: `make run` and `make test`. Both install everything first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGINS := plugins/omni-whatsapp-evolution plugins/omni-hive plugins/omni-slack plugins/omni-discord
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck check bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

run: install
	$(BIN)/omni serve

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy omni_core plugins/omni-whatsapp-evolution/omni_whatsapp_evolution plugins/omni-hive/omni_hive plugins/omni-slack/omni_slack plugins/omni-discord/omni_discord tests

check: lint typecheck test

# Benchmarks (issue 3): run on demand, never part of `make test`; writes docs/performance.md.
# BENCH_BACKENDS=sqlite skips PostgreSQL (which must otherwise be reachable, see bench/README.md).
BENCH_BACKENDS ?= sqlite postgres
bench: install
	command -v wrk >/dev/null 2>&1 || (apt-get install -y -qq wrk >/dev/null 2>&1 || true)
	$(BIN)/python -m bench --backend $(BENCH_BACKENDS)


clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
