# ember — top-level build. `make help` lists the targets.

CARGO   ?= cargo
PREFIX  ?= /usr/local
DESTDIR ?=

.PHONY: help deps build test lint guest install bench demo clean

help:
	@echo "make demo     run a busybox container through containerd with ember (the main job)"
	@echo "make test     install dependencies, check formatting and lints, run all tests"
	@echo "make build    build every crate (release)"
	@echo "make guest    build the guest kernel and agent image into build/guest/ (cached)"
	@echo "make install  build and install the binaries, the guest assets and the default config"
	@echo "make bench    run the benchmarks of the README's Performance section"
	@echo "make clean    remove build outputs"

deps:
	scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The guest kernel and image are built first so the tests that boot them run (the
# kernel build is cached outside the repo, keyed by its source, fragment and patches).
test: deps lint guest
	scripts/run-tests.sh

guest: deps
	$(CARGO) run --release -p ember-rootfs-builder -- all --out build/guest

install: build guest
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) scripts/install.sh

bench: deps
	$(CARGO) bench -p ember-vmm --bench coldstart
	$(CARGO) bench -p ember-vmm --bench devices
	$(CARGO) bench -p ember-agent --bench container_lifecycle
	$(CARGO) build --release -p ember-shim -p ember-agent -p ember-vmm
	EMBER_SHIM_DIR=$(CURDIR)/target/release $(CARGO) bench -p ember-tests --bench ctr

demo: deps guest
	scripts/demo.sh

clean:
	$(CARGO) clean
	rm -rf build
