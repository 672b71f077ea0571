# The two commands of the README:
#   make demo   build meshgate and run it (installs build prerequisites when root)
#   make test   install what the tests need, then run the whole suite
# Everything else is optional.

CARGO ?= cargo

.PHONY: demo test prereqs test-deps build build-release unit e2e lint fmt bench-micro bench bench-quick clean-results

demo: prereqs
	$(CARGO) build --release --bin meshgate --bin meshgate-sidecar
	./scripts/demo.sh

test: test-deps lint
	$(CARGO) build --workspace --bins
	./scripts/run-tests.sh

prereqs:
	./scripts/prereqs.sh build

test-deps:
	./scripts/prereqs.sh test

build:
	$(CARGO) build --workspace --bins

build-release:
	$(CARGO) build --release --bins

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Criterion micro-benchmarks of the policy hot paths.
bench-micro:
	$(CARGO) bench -p meshgate-bench --bench policy

# Load benchmarks: meshgate against direct, nginx and HAProxy on this machine
# (bench/README.md). Writes bench/results/latest.json and latest.md; installs
# nginx, haproxy, wrk, h2load (apt-get, as root) and oha (cargo) if missing.
bench:
	$(CARGO) build --release --bin meshgate --bin meshgate-sidecar
	BENCH_COMMAND="make bench" python3 bench/run.py $(BENCH_ARGS)

# The same in under 90 s: one round, 2 s runs, pinned mode only.
bench-quick:
	$(CARGO) build --release --bin meshgate --bin meshgate-sidecar
	BENCH_COMMAND="make bench-quick" python3 bench/run.py --quick $(BENCH_ARGS)
