# syntax=docker/dockerfile:1.7
#
# Stormlock image: `stormlockd` (the daemon, the entrypoint) and `stormlock`
# (the CLI) on a distroless base with no shell and no package manager, running
# as the non-root user 65532.
#
#   docker build -t stormlock:dev .
#   docker run --rm -v "$PWD/config.toml:/etc/stormlock/config.toml:ro" \
#     -v "$PWD/tls:/etc/stormlock/tls:ro" -p 7466:7466 stormlock:dev
#
# Ports: 7466 gRPC API (TLS), 7467 Prometheus metrics (HTTP, /metrics),
# 7468 plaintext gRPC health service (for Kubernetes' native gRPC probes).

# The toolchain must satisfy the locked dependencies (some need Rust 1.88+).
ARG RUST_VERSION=1.95

# Debian 12 (bookworm) in both stages, so the binaries run against the glibc
# they were linked with: keep the runtime's cc-debian12 in step with this tag.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# etcd-client compiles its protos with protoc; our own build.rs needs none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the
# binaries are copied out of the cached target dir, which the image never sees.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p stormlockd -p stormlock \
    && install -D -m 0755 -t /out/bin target/release/stormlockd target/release/stormlock \
    && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="stormlock" \
      org.opencontainers.image.description="Lease-based lock service: stormlockd gRPC daemon and stormlock CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/bin/stormlockd /out/bin/stormlock /usr/local/bin/
# The data dir (embedded backend) must be writable by the non-root user when
# no volume is mounted there.
COPY --from=build --chown=65532:65532 /out/data /var/lib/stormlock
# The daemon's state dir; the CLI inside the image finds it through its own variable.
ENV STORMLOCKD_DATA_DIR=/var/lib/stormlock STORMLOCK_DATA_DIR=/var/lib/stormlock
USER 65532:65532
EXPOSE 7466 7467 7468
ENTRYPOINT ["/usr/local/bin/stormlockd"]
CMD ["--config", "/etc/stormlock/config.toml"]
