# relaychat: see README.md. Every target works on a fresh clone.
GO        ?= go
BIN       ?= bin
SCENARIO  ?= mixed
TOPOLOGY  ?= proxy
BENCH_ARGS ?=
FUZZTIME  ?= 10s
# Fuzz targets run briefly on every `make test`, longer with `make fuzz`.
TEST_FUZZTIME ?= 3s

.PHONY: build run test unit fuzz-short fuzz bench lint deps clean

build:
	$(GO) build -o $(BIN)/ ./cmd/chat-server ./cmd/chat-proxy ./cmd/chat-bench

# What the tests and the stack need from Debian: redis-server, and for the
# browser and TLS tests Chromium and haproxy (each script installs its
# package only when missing).
deps:
	@scripts/ensure-redis.sh
	@scripts/ensure-chromium.sh
	@scripts/ensure-tls-front.sh

run: build
	@scripts/ensure-redis.sh
	BIN=$(BIN) TOPOLOGY=$(TOPOLOGY) scripts/run.sh

# Every test, race detector on, end-to-end ones included (real redis-server,
# real binaries), then a short run of each fuzz target.
test: deps lint unit fuzz-short

unit:
	$(GO) test -race -count=1 -timeout 10m ./...

# Fuzz targets: the codec's, the server's request handler, the link
# hello, and the WebSocket framing.
FUZZ_PKGS := ./codec/ ./server/ ./internal/peer/ ./internal/wsproto/

fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

fuzz:
	@GO=$(GO) FUZZTIME=$(FUZZTIME) scripts/fuzz.sh $(FUZZ_PKGS)

# make bench [SCENARIO=...] [BENCH_ARGS="chat-bench flags"]. SCENARIO=floor runs
# the anchor load against chat-bench's minimal relay (the machine's floor);
# SCENARIO=anchor-floor PAIRS=3 interleaves two scenarios, a table per pair.
# TOPOLOGY=proxy (default mesh), LOOPS=N, TRANSPORT=ws, BENCH_METRICS=1, NSERVERS=N, PAIRS=N and the
# rest of scripts/bench.sh's variables reach it from the make command line.
bench: build
	@scripts/ensure-redis.sh
	BIN=$(BIN) SCENARIO=$(SCENARIO) scripts/bench.sh $(BENCH_ARGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf $(BIN) .run bench-report.html bench-report.json
