# The two commands of the README:
#   make demo   build meshgate and run it (installs build prerequisites when root)
#   make test   install what the tests need, then run the whole suite
# Everything else is optional; `make deb` builds the Debian package.

CARGO ?= cargo

.PHONY: demo test prereqs test-deps build build-release release-pgo deb deb-pgo test-packaging unit e2e lint fmt bench-micro bench bench-quick clean-results

demo: prereqs
	$(CARGO) build --release --bin meshgate --bin meshgate-sidecar
	./scripts/demo.sh

# The release binaries are for the packaging test (tests/tests/packaging.rs),
# which packages and installs them.
test: test-deps lint
	$(CARGO) build --workspace --bins
	$(CARGO) build --release -p meshgate -p meshgate-sidecar
	./scripts/run-tests.sh

prereqs:
	./scripts/prereqs.sh build

test-deps:
	./scripts/prereqs.sh test

build:
	$(CARGO) build --workspace --bins

build-release:
	$(CARGO) build --release --bins

# The profile-guided release build (scripts/pgo-build.sh): both binaries
# built instrumented, trained on the quick load benchmark, built again with
# the profile and linked with the functions the training ran side by side,
# into target/pgo/release/. About 15 minutes on two cores; the training
# installs what the bench needs.
release-pgo:
	./scripts/pgo-build.sh

# The Debian package of the profile-guided build, into target/pgo/debian/.
deb-pgo: prereqs release-pgo
	CARGO_TARGET_DIR=$(CURDIR)/target/pgo MESHGATE_SKIP_BUILD=1 ./packaging/build-deb.sh

# The Debian package, into target/debian/ (packaging/build-deb.sh; its
# Depends line comes from dpkg-shlibdeps when dpkg-dev is installed).
# VERSION_SUFFIX=+local1 appends to the version.
deb: prereqs
	./packaging/build-deb.sh

# The packaging test alone (root): package, install, run, upgrade, purge,
# systemd-analyze verify, the container image's root filesystem.
test-packaging: test-deps
	$(CARGO) build --release -p meshgate -p meshgate-sidecar
	MESHGATE_SKIP_BUILD=1 ./tests/packaging/run.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Criterion micro-benchmarks of the policy hot paths.
bench-micro:
	$(CARGO) bench -p meshgate-bench --bench policy

# Load benchmarks: meshgate against direct, nginx and HAProxy on this machine,
# and against Caddy over HTTP/3 (bench/README.md). Writes
# bench/results/latest.json and latest.md; installs nginx, haproxy, wrk,
# h2load, caddy (apt-get, as root) and oha with HTTP/3 (cargo) if missing.
# PGO=1 measures the profile-guided build (make release-pgo) instead.
bench:
ifeq ($(PGO),1)
	./scripts/pgo-build.sh
	BENCH_COMMAND="make bench PGO=1" python3 bench/run.py --meshgate target/pgo/release/meshgate $(BENCH_ARGS)
else
	$(CARGO) build --release --bin meshgate --bin meshgate-sidecar
	BENCH_COMMAND="make bench" python3 bench/run.py $(BENCH_ARGS)
endif

# The same in about 80 s: one round, 2 s runs, pinned mode only, fewer rows.
bench-quick:
	$(CARGO) build --release --bin meshgate --bin meshgate-sidecar
	BENCH_COMMAND="make bench-quick" python3 bench/run.py --quick $(BENCH_ARGS)
