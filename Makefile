# relaychat: see README.md. Every target works on a fresh clone.
GO        ?= go
BIN       ?= bin
SCENARIO  ?= mixed
BENCH_ARGS ?=
FUZZTIME  ?= 10s
# Fuzz targets run briefly on every `make test`, longer with `make fuzz`.
TEST_FUZZTIME ?= 3s

.PHONY: build run test unit fuzz-short fuzz bench lint deps clean

build:
	$(GO) build -o $(BIN)/ ./cmd/chat-server ./cmd/chat-proxy ./cmd/chat-bench

deps:
	@scripts/ensure-redis.sh

run: build deps
	BIN=$(BIN) scripts/run.sh

# Every test, race detector on, end-to-end ones included (real redis-server,
# real binaries), then a short run of each fuzz target.
test: deps lint unit fuzz-short

unit:
	$(GO) test -race -count=1 -timeout 10m ./...

fuzz-short:
	@for f in $$($(GO) test -list '^Fuzz' ./codec/ | grep ^Fuzz); do \
	  echo "fuzz codec $$f for $(TEST_FUZZTIME)"; \
	  $(GO) test ./codec/ -run '^$$' -fuzz "^$$f$$" -fuzztime $(TEST_FUZZTIME) >/dev/null || exit 1; \
	done

fuzz:
	@for f in $$($(GO) test -list '^Fuzz' ./codec/ | grep ^Fuzz); do \
	  echo "fuzz codec $$f for $(FUZZTIME)"; \
	  $(GO) test ./codec/ -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) || exit 1; \
	done

bench: build deps
	BIN=$(BIN) SCENARIO=$(SCENARIO) scripts/bench.sh $(BENCH_ARGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf $(BIN) .run bench-report.html bench-report.json
