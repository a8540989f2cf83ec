# userd — see README.md. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)

# `make run` and `make migrate` use this database (created if missing).
DATABASE_URL      ?= postgres://postgres@127.0.0.1:5432/userd?sslmode=disable
# `make run` signs webhooks with this development-only secret unless
# CLERK_WEBHOOK_SECRET is set; `make demo-webhook` signs with the same one.
CLERK_WEBHOOK_SECRET ?= whsec_dXNlcmQtbG9jYWwtZGV2ZWxvcG1lbnQtc2VjcmV0
# Passed through the environment, never on a command line make echoes.
export DATABASE_URL CLERK_WEBHOOK_SECRET
# Tests create one fresh database per test on this server.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable
export TEST_DATABASE_URL

# Code generators, pinned in tools/go.mod and built into bin/: nothing is
# downloaded at generation time beyond the Go module proxy.
TOOL_PKGS := \
	github.com/bufbuild/buf/cmd/buf \
	github.com/sqlc-dev/sqlc/cmd/sqlc \
	google.golang.org/protobuf/cmd/protoc-gen-go \
	google.golang.org/grpc/cmd/protoc-gen-go-grpc \
	github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway \
	github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2 \
	github.com/fullstorydev/grpcurl/cmd/grpcurl
TOOLS_STAMP := $(BIN)/.tools-stamp

PROTO_SRC  := buf.yaml buf.gen.yaml $(wildcard proto/userd/v1/*.proto proto/userd/v1/*.yaml)
PROTO_OUT  := gen/userd/v1/user_service.pb.go
SQLC_SRC   := sqlc.yaml $(wildcard db/migrations/*.sql db/queries/*.sql)
SQLC_OUT   := gen/sqlc/db.go

.PHONY: help
help: ## List targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(TOOLS_STAMP): tools/go.mod tools/go.sum
	@mkdir -p $(BIN)
	cd tools && $(GO) build -o ../$(BIN)/ $(TOOL_PKGS)
	@touch $@

.PHONY: tools
tools: $(TOOLS_STAMP) ## Build the pinned generators and grpcurl into bin/.

$(PROTO_OUT): $(TOOLS_STAMP) $(PROTO_SRC)
	rm -rf gen/userd gen/openapi
	$(BIN)/buf lint
	$(BIN)/buf generate
	@touch $@

$(SQLC_OUT): $(TOOLS_STAMP) $(SQLC_SRC)
	rm -rf gen/sqlc
	$(BIN)/sqlc generate
	@touch $@

.PHONY: generate
generate: $(PROTO_OUT) $(SQLC_OUT) ## Regenerate gen/ (protobuf, gRPC, gateway, OpenAPI, sqlc) offline.

.PHONY: check-generated
check-generated: ## Regenerate everything and fail if gen/ or go.mod changed.
	$(MAKE) --no-print-directory -B $(PROTO_OUT) $(SQLC_OUT)
	@git add -N gen
	@git diff --exit-code --stat -- gen || { echo "gen/ is stale: run 'make generate' and commit the result"; exit 1; }
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run 'go mod tidy'"; exit 1; }
	@cd tools && $(GO) mod tidy -diff || { echo "tools/go.mod is not tidy: run 'cd tools && go mod tidy'"; exit 1; }

.PHONY: build
build: ## Build a static bin/userd with the version stamped in.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/userd ./cmd/userd

.PHONY: createdb
createdb: ## Create the database named in DATABASE_URL if it does not exist.
	@db=$$(sed -E 's#^[a-z]+://[^/]*/([^?]*).*#\1#' <<<"$$DATABASE_URL"); \
	server=$$(sed -E "s#/$$db(\?|$$)#/postgres\1#" <<<"$$DATABASE_URL"); \
	psql "$$server" -tAc "SELECT 1 FROM pg_database WHERE datname = '$$db'" | grep -q 1 || \
	  psql "$$server" -c "CREATE DATABASE \"$$db\""

.PHONY: run
run: build createdb ## Run userd against DATABASE_URL (default: local PostgreSQL, database userd).
	$(BIN)/userd serve

.PHONY: demo-webhook
demo-webhook: build ## Post a signed sample user.created to the userd that `make run` started.
	$(BIN)/userd send-clerk-event $(ARGS)

.PHONY: migrate
migrate: build createdb ## Apply pending migrations to DATABASE_URL (ARGS=down|status for others).
	$(BIN)/userd migrate $(or $(ARGS),up)

.PHONY: test
test: ## Run every test with the race detector (needs PostgreSQL at TEST_DATABASE_URL).
	$(GO) test -race -count=1 ./...

.PHONY: lint
lint: $(TOOLS_STAMP) ## go vet, gofmt and buf lint.
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); [ -z "$$out" ] || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(BIN)/buf lint

.PHONY: clean
clean: ## Remove bin/.
	rm -rf $(BIN)
