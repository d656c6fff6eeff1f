# corral: containerd's public API served by a supervisor and plugin processes.

MODULES    := proto pluginkit supervisor metadata-svc content-svc shim cmd integration bench
TOOLS_BIN  := $(CURDIR)/.tools/bin
RUN_DIR    := $(CURDIR)/.run
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION   ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS    := -X corral.dev/supervisor/version.Version=$(VERSION) -X corral.dev/supervisor/version.Revision=$(REVISION)
GO_TEST    ?= go test -count=1
export PATH := $(TOOLS_BIN):$(PATH)
export CORRAL_CTR2 := $(TOOLS_BIN)/ctr
export H2SPEC := $(TOOLS_BIN)/h2spec

.PHONY: all deps build run test test-unit test-root check-protos protos lint clean

all: build

## deps: install Debian packages and pinned Go tools (root)
deps:
	./deploy/install-deps.sh

## build: every binary into bin/
build:
	go build -ldflags "$(LDFLAGS)" -o bin/containerd ./cmd/containerd
	go build -ldflags "$(LDFLAGS)" -o bin/metadata-svc ./metadata-svc/cmd/metadata-svc
	@if [ -d content-svc/cmd/content-svc ]; then \
		go build -ldflags "$(LDFLAGS)" -o bin/content-svc ./content-svc/cmd/content-svc; fi
	@if [ -d shim/cmd/containerd-shim-corral-v2 ]; then \
		CGO_ENABLED=0 go build -o bin/containerd-shim-corral-v2 ./shim/cmd/containerd-shim-corral-v2; fi

## run: start the daemon on the embedded development configuration (.run/)
run: deps build
	@mkdir -p $(RUN_DIR)
	@sed 's|@RUN@|$(RUN_DIR)|g' deploy/dev.toml.in > $(RUN_DIR)/config.toml
	@echo "socket: $(RUN_DIR)/containerd.sock  (ctr --address $(RUN_DIR)/containerd.sock ...)"
	exec bin/containerd --config $(RUN_DIR)/config.toml

## test: the whole suite, root tests included (what CI runs)
test: deps check-protos lint test-unit test-root

## test-unit: tests that need no root, in every module
test-unit:
	@set -e; for m in $(MODULES); do \
		pkgs=$$(./.ci/packages $$m unit); \
		[ -z "$$pkgs" ] || (cd $$m && $(GO_TEST) $$pkgs); \
	done

## test-root: tests gated by testkit.RequiresRoot, with -test.root
test-root:
	@set -e; for m in $(MODULES); do \
		pkgs=$$(./.ci/packages $$m root); \
		[ -z "$$pkgs" ] || (cd $$m && $(GO_TEST) -timeout 20m $$pkgs -args -test.root); \
	done

## protos: regenerate proto/ from its .proto files
protos:
	cd proto && buf generate

## check-protos: fail when the committed generated code is stale
check-protos:
	@tmp=$$(mktemp -d) && cp -r proto "$$tmp/" && (cd "$$tmp/proto" && buf generate) && \
		diff -r proto "$$tmp/proto" >/dev/null || { echo "proto/: generated code is stale, run make protos"; rm -rf "$$tmp"; exit 1; }; \
		rm -rf "$$tmp"

## lint: gofmt, go vet and staticcheck in every module
lint:
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	@set -e; for m in $(MODULES); do \
		if [ -n "$$(cd $$m && go list ./... 2>/dev/null)" ]; then \
			(cd $$m && go vet ./... && staticcheck ./...); fi; \
	done

clean:
	rm -rf bin .run
