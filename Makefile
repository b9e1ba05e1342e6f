# Expie Gateway — the two commands a newcomer needs are `make demo` and `make test`.
# Every target bootstraps .venv on first use and is quick when nothing changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGE_STAMP := $(VENV)/.installed-package
TOOLS_VENV := .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed
CHART_TOOLS := helm/chart-tools.txt
PORT ?= 8080
SIM_PORT ?= 8081
REDIS_URL ?= redis://127.0.0.1:6379/0
export REDIS_URL

.PHONY: help demo test lint unit bench chaos fuzz venv tools clean

help:
	@echo "make demo   start the simulator and the gateway in front of it, print a token and calls"
	@echo "            (make demo PORT=9080 SIM_PORT=9081 picks the ports)"
	@echo "make test   lint, make sure Redis answers, run the whole test suite"
	@echo "make lint   ruff + mypy --strict + hadolint"
	@echo "make bench  run every benchmark under bench/ (JSON to stdout and bench/results/)"
	@echo "make chaos  the gateway's processes through real faults (Redis emptied or killed,"
	@echo "            replicas killed, exchange errors, retry storm, stalled pushes): one JSON"
	@echo "            line per scenario"
	@echo "make fuzz   a long schema-driven fuzz of a live gateway (counts as JSON)"
	@echo "make tools  the chart tests' tools (Helm's engine, Kubernetes schemas) in $(TOOLS_VENV)"

venv: $(STAMP)

# The package alone (what the demo runs); the test tools come on top of it for everything else.
$(PACKAGE_STAMP): pyproject.toml
	@echo ">>> installing the gateway and its dependencies into $(VENV) (once)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --disable-pip-version-check --progress-bar off -e . \
		| grep -E '^(Collecting|Successfully)' || true
	@$(BIN)/python -c 'import gateway.app, simulator.app'
	@touch $(PACKAGE_STAMP)

$(STAMP): $(PACKAGE_STAMP)
	@echo ">>> installing the test tools into $(VENV) (once)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# Helm's engine and the Kubernetes API schemas for the chart tests: large, so in an environment of
# their own, not among the package's dependencies; the tests call it through scripts/render-chart.py.
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): $(CHART_TOOLS)
	@echo ">>> installing the chart tools into $(TOOLS_VENV) (once)"
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	@$(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(CHART_TOOLS)
	@$(TOOLS_VENV)/bin/python -c 'import helm_python, kubernetes_validate, yaml'
	@touch $(TOOLS_STAMP)

demo: $(PACKAGE_STAMP)
	@$(BIN)/expie-gateway demo --port $(PORT) --sim-port $(SIM_PORT)

lint: $(STAMP)
	$(BIN)/ruff check gateway simulator tests bench scripts chaos
	$(BIN)/mypy --strict gateway simulator chaos
	$(BIN)/hadolint Dockerfile

test: $(STAMP) $(TOOLS_STAMP) lint
	scripts/ensure-redis.sh
	$(BIN)/pytest -q

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

bench: $(STAMP)
	@mkdir -p bench/results
	@set -e; for module in bench.simulator_rest bench.auth_overhead bench.market_data bench.order_path bench.ws_fanout bench.relay bench.sign_in_guessing; do \
		echo ">>> $$module" >&2; $(BIN)/python -m $$module; done

# Its own redis-server (on a free port, with AOF), the simulator and gateway replicas, all on
# loopback; exit 1 when a scenario is not ok. `make test` runs the short version.
chaos: $(STAMP)
	$(BIN)/python -m chaos

fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzzing --examples $(or $(EXAMPLES),300)

clean:
	rm -rf $(VENV) $(TOOLS_VENV) .mypy_cache .ruff_cache .pytest_cache .run
