# levee: `make test` runs every check CI runs; `make demo` shows levee at work.
SHELL := bash
CARGO ?= cargo

.PHONY: all deps lint test unit e2e e2e-kind image static cluster-up cluster-down crds manifests bench bench-controller bench-scale bench-keda fuzz demo build clean

all: build

build:
	$(CARGO) build --release

## deps: install redis, openssl and the queue libraries the tests write data with
deps:
	@scripts/deps.sh

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## test: every check and every test (unit, property, real Redis, CLI, end-to-end on the local
## control plane, then on kind with levee's image as pods: skipped, loudly, where no Docker answers);
## the long cold builds run in the background meanwhile; a table of each phase's time at the end
test:
	@scripts/test.sh

## unit: the levee crate's tests (unit, property, real Redis, CLI, docs)
unit: deps
	$(CARGO) test

## e2e: the end-to-end suite on the local control plane and KEDA beside it (both built from Go
## modules, cached; a cold KEDA build runs in the background while the first suites run), its
## test binaries in two lanes side by side, the floods alone (e2e/scripts/suites.sh)
e2e:
	LEVEE_KEDA_PREBUILD=1 e2e/scripts/with-cluster.sh e2e/scripts/suites.sh

## e2e-kind: (machines with Docker; CI=true starts one) levee's image as pods on kind, then the suite
e2e-kind: deps
	e2e/scripts/kind.sh

## static: the static (musl) binary the image holds, without Docker; LEVEE_BIN=<it> make e2e runs the suite with it
static:
	scripts/static.sh

## image: levee's container image levee:dev (the static binary FROM scratch, non-root), no pull
image: static
	scripts/image.sh

## cluster-up / cluster-down: a local control plane in .cache/cluster for manual use
cluster-up:
	e2e/scripts/tools.sh install $(CURDIR)/.cache/bin >/dev/null
	e2e/scripts/controlplane.sh up $(CURDIR)/.cache/cluster
	@echo "export KUBECONFIG=$(CURDIR)/.cache/cluster/admin.kubeconfig PATH=$(CURDIR)/.cache/bin:\$$PATH"

cluster-down:
	e2e/scripts/controlplane.sh down $(CURDIR)/.cache/cluster

## crds: regenerate crds/ and the chart's copy from the Rust types (tests fail when they are stale)
crds:
	$(CARGO) run --quiet -- crd > crds/levee.dev_backpressurepolicies.yaml
	cp crds/levee.dev_backpressurepolicies.yaml charts/levee/crds/

## manifests: re-render manifests/ from charts/levee (a test fails when it is stale)
manifests:
	e2e/scripts/tools.sh install $(CURDIR)/.cache/bin >/dev/null
	HELM=$(CURDIR)/.cache/bin/helm scripts/render-manifests.sh

## bench: sampling tick (vs redis-benchmark, per-queue EVAL), metrics API (vs a constant TLS server)
## and one /metrics scrape at 1,000 policies (size, time, allocations); Kafka at 1/100/1,000
## partitions and NATS at 1/100/1,000 consumers on a real broker and server (requests, tick time)
bench: deps
	$(CARGO) bench --bench sampler
	$(CARGO) bench --bench metrics_api
	$(CARGO) bench --bench telemetry
	$(CARGO) bench --bench kafka
	$(CARGO) bench --bench nats

## bench-controller: API writes at steady state and reaction time, on the local control plane
bench-controller: deps
	$(CARGO) build --release --bin levee
	LEVEE_BIN=$(CURDIR)/target/release/levee e2e/scripts/with-cluster.sh cargo bench -p levee-e2e --bench controller

## bench-scale: LEVEE_SCALE_SIZES policies (default 100 1000 5000) of 10 queues, each holding back its
## own Deployment, on a fresh local control plane each: RSS, CPU, writes by kind, a 20-policy burst.
## Measures the image's static binary (LEVEE_SCALE_BINS="a b" compares builds on one cluster),
## LEVEE_SCALE_REPLICAS of it (default 1; several share the policies: --ownership=shards, peers).
bench-scale: deps static
	for n in $${LEVEE_SCALE_SIZES:-100 1000 5000}; do \
	  LEVEE_SCALE_POLICIES=$$n LEVEE_BIN=$(CURDIR)/target/x86_64-unknown-linux-musl/release/levee \
	    e2e/scripts/with-cluster.sh cargo bench -p levee-e2e --bench scale || exit 1; \
	done

## bench-keda: levee and KEDA (built from its module) side by side on one Redis, for N of
## LEVEE_KEDA_BENCH_SIZES (default 10 100 1000) lists: Redis commands and round trips, metric
## latency through the aggregator, burst -> first scale-up, memory; then the same on a real Kafka
## broker and nats-server for N of LEVEE_KEDA_BROKER_SIZES (default 1 10 100) consumers: what the
## broker / server counts it was asked, metric latency, memory (docs/benchmarks.md#keda)
bench-keda: deps
	$(CARGO) build --release --bin levee
	LEVEE_BIN=$(CURDIR)/target/release/levee e2e/scripts/with-cluster.sh sh -c \
	  'cargo bench -p levee-e2e --bench keda && cargo bench -p levee-e2e --bench keda_brokers'

## fuzz: a minute of libFuzzer on each network-facing parser (needs the nightly toolchain); the
## brokers' replies under a 256 MiB RSS limit and no single allocation over 64 MiB, with ASan's
## quarantine of freed memory cut to 16 MiB (at its default of 256 MiB the quarantine alone
## passes the RSS limit: 211 MiB quarantined beside 25 MiB live, none of it levee's)
FUZZ_BOUNDED = ASAN_OPTIONS=quarantine_size_mb=16
FUZZ_LIMITS = -rss_limit_mb=256 -malloc_limit_mb=64
fuzz:
	cd fuzz && cargo +nightly fuzz run selector -- -max_total_time=60
	cd fuzz && cargo +nightly fuzz run metric_request -- -max_total_time=60
	cd fuzz && $(FUZZ_BOUNDED) cargo +nightly fuzz run kafka_records -- -max_total_time=60 $(FUZZ_LIMITS)
	cd fuzz && $(FUZZ_BOUNDED) cargo +nightly fuzz run kafka_reply -- -max_total_time=60 $(FUZZ_LIMITS)
	cd fuzz && $(FUZZ_BOUNDED) cargo +nightly fuzz run nats_reply -- -max_total_time=60 $(FUZZ_LIMITS)

## demo: local control plane + Redis + the chart; a burst opens the circuit, the HPA scales the workers, all recovers
demo: deps build
	@scripts/demo.sh

clean:
	$(CARGO) clean
	rm -rf .cache tests/producers/node_modules
