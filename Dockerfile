# userd: a static binary on a distroless base, running as non-root.
# Build: docker build -t userd .   (needs a Docker engine; not built in CI here)
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/userd ./cmd/userd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/userd /usr/local/bin/userd
USER nonroot:nonroot
# gRPC, HTTP API, Clerk webhook, operations.
EXPOSE 9090 8080 8081 9091
# The image has no PostgreSQL: set DATABASE_URL.
ENTRYPOINT ["/usr/local/bin/userd"]
CMD ["serve"]
