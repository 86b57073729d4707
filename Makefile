# swapd — the two commands a newcomer needs are `make run` and `make test`.

CARGO ?= cargo
SWAPD_CACHE ?= $(HOME)/.cache/swapd
export SWAPD_CACHE
LISTEN ?= 127.0.0.1:8080

.PHONY: build release release-test-hooks run run-prereqs run-fake test test-unit test-e2e e2e-deps lint fmt fmt-check bench bench-real soak clean
.PHONY: install install-files deb test-ops test-package test-prometheus
.PHONY: bench-scale
.PHONY: ui-gz test-ui

build:
	$(CARGO) build --bins

release:
	$(CARGO) build --release --bins

# Real models: installs llama-server and the model generator into $(SWAPD_CACHE) when missing,
# generates tiny GGUF models, and serves config/demo.yaml on $(LISTEN).
run: run-prereqs release e2e-deps
	@. $(SWAPD_CACHE)/env.sh && \
	  echo "" && \
	  echo "swapd serving config/demo.yaml on http://$(LISTEN) — try:" && \
	  echo "  curl -s http://$(LISTEN)/v1/models" && \
	  echo "  curl -s http://$(LISTEN)/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\":\"tiny-a\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":16}'" && \
	  echo "  curl -N http://$(LISTEN)/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\":\"tiny-b\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":16}'" && \
	  echo "  curl -s http://$(LISTEN)/v1/embeddings -H 'Content-Type: application/json' -d '{\"model\":\"tiny-embed\",\"input\":\"hello\"}'" && \
	  echo "  curl -s http://$(LISTEN)/running" && \
	  echo "  curl -N http://$(LISTEN)/logs/stream/tiny-a" && \
	  echo "" && \
	  exec target/release/swapd --config config/demo.yaml --listen $(LISTEN)

# What `make run` needs on a fresh machine, each missing one named with a one-line hint
# (curl is only needed to try the demo, so its absence is a note, not an error).
run-prereqs:
	@missing=0; \
	command -v cargo >/dev/null 2>&1 || { echo "make run: missing cargo (Rust toolchain): install it from https://rustup.rs"; missing=1; }; \
	{ command -v c++ || command -v g++ || command -v clang++; } >/dev/null 2>&1 || { echo "make run: missing a C++ compiler (builds llama-server): e.g. apt-get install g++"; missing=1; }; \
	command -v python3 >/dev/null 2>&1 || { echo "make run: missing python3 (generates the demo models): e.g. apt-get install python3 python3-venv"; missing=1; }; \
	{ ! command -v python3 >/dev/null 2>&1 || python3 -c 'import ensurepip, venv' >/dev/null 2>&1; } || { echo "make run: python3 cannot create virtual environments: e.g. apt-get install python3-venv"; missing=1; }; \
	command -v curl >/dev/null 2>&1 || echo "make run: note: curl is not installed (the commands printed to try the demo use it): e.g. apt-get install curl"; \
	exit $$missing

# The same daemon on config/example.yaml, whose models are the fake-upstream test fixture.
run-fake: build
	PATH="$(CURDIR)/target/debug:$$PATH" target/debug/swapd --config config/example.yaml --listen $(LISTEN)

e2e-deps:
	tests/e2e/install.sh

test: test-unit test-e2e test-ops

# The test hooks (cargo feature `test-hooks`, see src/proxy/hooks.rs) are on for the tests and
# benchmarks: cargo builds the swapd binary the integration tests run with the same features.
# Tests that need a hook are reported as ignored in a plain `cargo test`.
TEST_FEATURES ?= --features test-hooks

# The daemon tests mostly wait on child processes, timers and sockets rather than the CPU, so
# they run 8 at a time even on 2 cores (each has its own ports, temp dir and processes).
TEST_THREADS ?= 8

test-unit:
	$(CARGO) build --bins $(TEST_FEATURES)
	$(CARGO) test $(TEST_FEATURES) -- --test-threads=$(TEST_THREADS)
	$(CARGO) test -p tiny_http --lib

# The release binary with the test hooks (the multi-host e2e test shortens the peer check
# interval); `make release` builds it again without them.
release-test-hooks:
	$(CARGO) build --release --bins $(TEST_FEATURES)

test-e2e: release-test-hooks e2e-deps
	SWAPD_BIN=$(CURDIR)/target/release/swapd tests/e2e/run.sh
	SWAPD_BIN=$(CURDIR)/target/release/swapd tests/e2e/run_ui.sh

# Only the browser test of the web UI (headless Chromium + selenium, installed when missing).
test-ui: release-test-hooks e2e-deps
	SWAPD_BIN=$(CURDIR)/target/release/swapd tests/e2e/run_ui.sh

lint:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets $(TEST_FEATURES) -- -D warnings

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

bench:
	$(CARGO) bench $(TEST_FEATURES) --bench logbuf
	$(CARGO) bench $(TEST_FEATURES) --bench metrics
	$(CARGO) bench $(TEST_FEATURES) --bench extract
	$(CARGO) bench $(TEST_FEATURES) --bench access
	$(CARGO) bench $(TEST_FEATURES) --bench ollama
	$(CARGO) bench $(TEST_FEATURES) --bench matrix
	$(CARGO) bench $(TEST_FEATURES) --bench proxy
	$(CARGO) bench $(TEST_FEATURES) --bench peers

# N idle connections and N concurrent streams for N = 100 … 10,000 (SWAPD_SCALE_N=100,1000
# for fewer); raises its own descriptor limit.
bench-scale:
	$(CARGO) bench $(TEST_FEATURES) --bench scale

# Throughput through swapd versus direct with a real llama-server (needs the e2e install).
bench-real: release
	tests/e2e/throughput.sh

# Mixed traffic against three fake models with swaps, disconnects and killed upstreams.
soak:
	tests/soak.sh

clean:
	$(CARGO) clean

# --- Operations: installing, packaging, and the tests that run them for real ----------------

# `make install [PREFIX=/usr/local] [DESTDIR=]`: the binary, the systemd units (paths rewritten
# for PREFIX), the config (only when none exists: an edited one is never overwritten) and docs.
# With PREFIX=/usr the config goes to /etc/swapd, otherwise to PREFIX/etc/swapd.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR ?= $(PREFIX)/lib/systemd/system
DOCDIR ?= $(PREFIX)/share/doc/swapd
SWAPD_INSTALL_BINARY ?= target/release/swapd

install: release install-files

install-files:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/swapd $(DESTDIR)$(DOCDIR)
	install -m 0755 $(SWAPD_INSTALL_BINARY) $(DESTDIR)$(BINDIR)/swapd
	for unit in swapd.service swapd.socket; do \
	  sed -e 's|/usr/bin/swapd|$(BINDIR)/swapd|g' -e 's|/etc/swapd/|$(SYSCONFDIR)/swapd/|g' \
	      -e 's|/usr/share/doc/swapd|$(DOCDIR)|g' config/$$unit >$(DESTDIR)$(UNITDIR)/$$unit && \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$unit || exit 1; \
	done
	test -e $(DESTDIR)$(SYSCONFDIR)/swapd/config.yaml || \
	  install -m 0644 config/swapd.yaml $(DESTDIR)$(SYSCONFDIR)/swapd/config.yaml
	install -m 0644 README.md config/example.yaml config/grafana-dashboard.json $(DESTDIR)$(DOCDIR)/

# The Debian package (dpkg-deb, no debhelper): target/debian/swapd_VERSION_ARCH.deb.
deb: release
	config/debian/build-deb.sh target/release/swapd target/debian

# The package installed and purged with dpkg, and a real Prometheus scraping swapd.
test-ops: test-package test-prometheus

test-package: release
	tests/package.sh target/release/swapd

test-prometheus: release
	@command -v prometheus >/dev/null 2>&1 || tests/e2e/install-prometheus.sh
	SWAPD_BIN=$(CURDIR)/target/release/swapd FAKE_UPSTREAM_BIN=$(CURDIR)/target/release/fake-upstream \
	  python3 tests/e2e/test_prometheus.py

# The UI's files are served gzip-compressed from copies kept next to them; run this after
# editing src/ui/ (a unit test fails while a copy is stale).
ui-gz:
	for f in src/ui/index.html src/ui/app.js src/ui/app.css; do gzip -9 -n -c $$f > $$f.gz; done
