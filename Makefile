# ember — top-level build. `make help` lists the targets.

CARGO   ?= cargo
PREFIX  ?= /usr/local
DESTDIR ?=

.PHONY: help deps build test lint guest install bench demo clean

help:
	@echo "make demo     run a busybox container through containerd with ember (the main job)"
	@echo "make test     install dependencies, check formatting and lints, run all tests"
	@echo "make build    build every crate (release)"
	@echo "make guest    build the guest kernel and image into build/guest/"
	@echo "make install  install ember's binaries (and guest assets when built)"
	@echo "make bench    run the benchmarks of the README's Performance section"
	@echo "make clean    remove build outputs"

deps:
	scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: deps lint
	scripts/run-tests.sh

guest:
	@echo "make guest: not built yet (the guest assets issue builds it)"; exit 1

install: build
	install -D -m 0755 target/release/ember $(DESTDIR)$(PREFIX)/bin/ember
	install -D -m 0644 config/ember.toml.example $(DESTDIR)/usr/share/ember/config.toml.example

bench: deps
	$(CARGO) bench -p ember-vmm --bench coldstart
	$(CARGO) bench -p ember-vmm --bench devices

demo:
	@echo "make demo: not built yet (the runtime and shim issue builds it)"; exit 1

clean:
	$(CARGO) clean
	rm -rf build
