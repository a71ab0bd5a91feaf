# Gyre — make help lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GYRE_CACHE ?= $(HOME)/.cache/gyre
export GYRE_CACHE
VENV ?= $(GYRE_CACHE)/venv/py311-v1
PY := $(VENV)/bin/python
# The checkout's own sources come first, whichever checkout installed the shared venv.
export PYTHONPATH := $(CURDIR)/operators
export PATH := $(VENV)/bin:$(PATH)
PYTEST_ARGS ?=
# Written by scripts/setup.sh when it completes; the test targets run setup when it is missing
# (a fresh machine) or older than pyproject.toml, and otherwise cost nothing.
SETUP_STAMP := $(VENV)/.gyre-setup-complete

##@ Setup

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## Install everything: Python deps, control-plane binaries, Kafka jars, torch + Horovod (cached in ~/.cache/gyre)
	bash scripts/setup.sh

$(SETUP_STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

##@ Development

.PHONY: lint
lint: ## ruff, mypy --strict, import contracts, generated files up to date
	$(PY) -m ruff check operators pipelines tests e2e
	$(PY) -m ruff format --check operators pipelines tests e2e
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(PY) -m gyre.cli manifests --check
	$(PY) charts/gyre/hack/generate_dashboards.py --check

.PHONY: fmt
fmt: ## Format the code
	$(PY) -m ruff format operators pipelines tests e2e
	$(PY) -m ruff check --fix operators pipelines tests e2e

.PHONY: manifests
manifests: ## Generate CRDs into manifests/crds and charts/gyre/crds from the API models
	$(PY) -m gyre.cli manifests

.PHONY: test-unit
test-unit: $(SETUP_STAMP) ## Unit tests: no services
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: test
test: $(SETUP_STAMP) ## Everything CI runs (sets up first on a fresh machine): lint, unit, control-plane, runtime and integration tests
	@$(MAKE) --no-print-directory lint
	$(PY) -m pytest tests --durations=25 $(PYTEST_ARGS)

##@ Running

.PHONY: cluster
cluster: ## Start the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok); KUBELET=1 adds a real node
	$(PY) -m gyre.cli cluster up $(if $(KUBELET),--kubelet)

.PHONY: cluster-down
cluster-down: ## Stop the local control plane; leaves no process (nor mount, bridge, iptables chain, cgroup) behind
	$(PY) -m gyre.cli cluster down

.PHONY: demo
demo: setup ## Set up, then run the example system on the embedded default (local control plane + local runtime)
	$(PY) -m gyre.cli demo $(ARGS)

.PHONY: bench
bench: ## Benchmarks (JSON on stdout): operator, stream, train, bandit, serve, features
	$(PY) -m gyre.cli bench operator
	$(PY) -m gyre.cli bench stream
	$(PY) -m gyre.cli bench train
	$(PY) -m gyre.cli bench bandit
	$(PY) -m gyre.cli bench serve
	$(PY) -m gyre.cli bench features

##@ Images

.PHONY: images
images: ## Build the operator and runtime images with podman (no Docker, no registry; cached by their inputs); LOAD=1 imports them into the real node of `make cluster KUBELET=1`
	$(PY) -m gyre.cli images $(if $(LOAD),--load)

.PHONY: docker-images
docker-images: ## Build the operator and runtime images with Docker
	docker build -f images/operator/Dockerfile -t ghcr.io/gyre-ml/gyre-operator:0.1.0 .
	docker build -f images/runtime/Dockerfile -t ghcr.io/gyre-ml/gyre-runtime:0.1.0 .
