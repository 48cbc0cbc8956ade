# levee: `make test` runs every check CI runs; `make demo` shows levee at work.
SHELL := bash
CARGO ?= cargo

.PHONY: all deps lint test unit crds crds-check bench demo build clean

all: build

build:
	$(CARGO) build --release

## deps: install redis, openssl and the queue libraries the tests write data with
deps:
	@scripts/deps.sh

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## test: every check and every test (unit, property, real Redis, CLI)
test: deps lint
	$(CARGO) test
	@echo "make test: all green"

## crds: regenerate crds/ from the Rust types (a test fails when it is stale)
crds:
	$(CARGO) run --quiet -- crd > crds/levee.dev_backpressurepolicies.yaml

## bench: sampling-tick benchmark against redis-benchmark and per-queue EVAL (docs/benchmarks.md)
bench: deps
	$(CARGO) bench --bench sampler

## demo: a burst of jobs opens the circuit and the drain closes it again
demo: deps build
	@scripts/demo.sh

clean:
	$(CARGO) clean
	rm -rf .cache tests/producers/node_modules
