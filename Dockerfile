# userd's container image: the static binary `make build` produces, the CA
# certificates and a non-root account, on an empty base. Nothing is pulled
# from a registry and nothing runs during the build, so buildah and docker
# build it offline alike.
#
# Build it with `make image`, not `docker build .`: its build context is the
# directory `make image-context` stages (bin/image/), which holds
#   rootfs/usr/local/bin/userd              CGO_ENABLED=0, version stamped
#   rootfs/etc/ssl/certs/ca-certificates.crt from the build machine
#   rootfs/etc/passwd, rootfs/etc/group      root and nonroot (65532)
#   rootfs/tmp                               mode 1777
# and make runs `buildah bud -f Dockerfile bin/image` (or `docker build`).
FROM scratch

# One layer; every file belongs to root, so the service cannot rewrite its
# own binary or certificates.
COPY rootfs/ /

# Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# gRPC, HTTP API, Clerk webhook, operations (/healthz, /readyz, /metrics).
EXPOSE 9090 8080 8081 9091
# The image has no PostgreSQL: set DATABASE_URL.
ENTRYPOINT ["/usr/local/bin/userd"]
CMD ["serve"]

ARG VERSION=dev
ARG REVISION=
ARG SOURCE=
LABEL org.opencontainers.image.title="userd" \
      org.opencontainers.image.description="Mirrors Clerk users into PostgreSQL and owns their plan and credits" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
