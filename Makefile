# depgate — the two commands a fresh machine needs: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test deps system-deps plane checks unit waiter integration lint typecheck importlint \
        bench chaos e2e down lock clean graph-picture

## make run: bring up the local plane (or use $KUBECONFIG with USE_EXISTING_CLUSTER=true), install the
## CRD, apply examples/microservices, and run the operator in the foreground.
run: deps
	@$(BIN)/python -m depgate.dev.demo

## make test: install what the suite needs, then lint, type-check, and run every test.
test: deps system-deps checks
	$(BIN)/pytest -q -p no:cacheprovider tests

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

deps: $(STAMP)

## Debian packages the tests use (command:package): redis-server (waiter tests), openssl (plane and TLS
## tests), prometheus and promtool (the alert rules and the dashboard's queries), graphviz's dot (the graph
## picture) and librsvg's rsvg-convert (that SVG drawn again as PNG); then the Go builds into the cache: the
## plane, helm and the test tools (kstatus, Argo CD's Lua).
DEBIAN_DEPS := redis-server:redis-server openssl:openssl prometheus:prometheus promtool:prometheus dot:graphviz \
               rsvg-convert:librsvg2-bin
system-deps:
	@missing=""; for cp in $(DEBIAN_DEPS); do command -v $${cp%%:*} >/dev/null || case " $$missing " in \
	  *" $${cp##*:} "*) ;; *) missing="$$missing $${cp##*:}";; esac; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@if [ "$${USE_EXISTING_CLUSTER:-}" != "true" ] && [ -z "$${KUBEBUILDER_ASSETS:-}" ]; then $(BIN)/depgate dev build; \
	else $(BIN)/depgate dev build --only helm && $(BIN)/depgate dev build --only tools; fi

checks: lint typecheck importlint

lint: deps
	$(BIN)/ruff check operator tests bench
	$(BIN)/hadolint --config .hadolint.yaml Dockerfile

typecheck: deps
	$(BIN)/mypy

importlint: deps
	$(BIN)/lint-imports

unit: deps
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

waiter: deps system-deps
	$(BIN)/pytest -q -p no:cacheprovider tests/waiter

integration: deps system-deps
	$(BIN)/pytest -q -p no:cacheprovider tests/integration

down: deps
	$(BIN)/depgate dev down

## make graph-picture: docs/graph-microservices.svg, the README's picture of examples/microservices' dependency
## graph (depgate graph -o svg: Graphviz's dot; tests/integration/test_graph_picture.py checks it is up to date).
graph-picture: deps
	$(BIN)/depgate graph -f examples/microservices -o svg > docs/graph-microservices.svg.tmp
	mv docs/graph-microservices.svg.tmp docs/graph-microservices.svg

## make chaos: the fault suite at the issue's sizes (its fast part already runs in make test).
chaos: deps system-deps
	DEPGATE_CHAOS_RESULTS=bench/results/chaos.json $(BIN)/pytest -q -p no:cacheprovider -m chaos_long tests/chaos

## make e2e: the end-to-end tier on a REAL node (root): a kubelet compiled into the cache, Debian's containerd, runc
## and CNI plugins (installed when missing), images built locally (no registry); init containers really run.
e2e: deps system-deps
	$(BIN)/pytest -q -p no:cacheprovider -m e2e tests/e2e

## make bench: every benchmark under bench/ against a private local plane; results in bench/results/.
bench: deps system-deps
	$(BIN)/python bench/run.py

lock:
	rm -rf /tmp/depgate-lock && $(PY) -m venv /tmp/depgate-lock && /tmp/depgate-lock/bin/pip install -q '.[dev]' && \
	  (echo "# Pinned transitive set for 'pip install -c requirements.lock -e .[dev]'. Regenerate with 'make lock'."; \
	   /tmp/depgate-lock/bin/pip freeze --exclude-editable | grep -v '^depgate') > requirements.lock

clean:
	rm -rf $(VENV) build dist operator/*.egg-info .pytest_cache .mypy_cache .ruff_cache
