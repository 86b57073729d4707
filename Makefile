# swapd — the two commands a newcomer needs are `make run` and `make test`.

CARGO ?= cargo
SWAPD_CACHE ?= $(HOME)/.cache/swapd
export SWAPD_CACHE
LISTEN ?= 127.0.0.1:8080

.PHONY: build release run run-fake test test-unit test-e2e e2e-deps lint fmt fmt-check bench bench-real soak clean

build:
	$(CARGO) build --bins

release:
	$(CARGO) build --release --bins

# Real models: installs llama-server and the model generator into $(SWAPD_CACHE) when missing,
# generates tiny GGUF models, and serves config/demo.yaml on $(LISTEN).
run: release e2e-deps
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

# The same daemon on config/example.yaml, whose models are the fake-upstream test fixture.
run-fake: build
	PATH="$(CURDIR)/target/debug:$$PATH" target/debug/swapd --config config/example.yaml --listen $(LISTEN)

e2e-deps:
	tests/e2e/install.sh

test: test-unit test-e2e

test-unit:
	$(CARGO) build --bins
	$(CARGO) test

test-e2e: release e2e-deps
	SWAPD_BIN=$(CURDIR)/target/release/swapd tests/e2e/run.sh

lint:
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

bench:
	$(CARGO) bench --bench logbuf
	$(CARGO) bench --bench metrics
	$(CARGO) bench --bench extract
	$(CARGO) bench --bench proxy

# Throughput through swapd versus direct with a real llama-server (needs the e2e install).
bench-real: release
	tests/e2e/throughput.sh

# Mixed traffic against three fake models with swaps, disconnects and killed upstreams.
soak:
	tests/soak.sh

clean:
	$(CARGO) clean
