# syntax=docker/dockerfile:1
#
# cio-gateway container image.
#
#   docker build -t cio-gateway .
#   docker run --rm -p 8080:8080 -e GATEWAY__HTTP__ADDR=0.0.0.0:8080 cio-gateway
#
# (http.addr defaults to 127.0.0.1:8080, which is unreachable from outside a container; the
# Helm chart sets it to 0.0.0.0:8080 in its rendered config. The image does not set it itself,
# because an environment variable would silently override the chart's config file.)

# Builder and runtime must be the same Debian release (12, bookworm): the binary links the
# system OpenSSL 3 (native-tls, through reqwest and lapin) and glibc dynamically.
ARG RUST_VERSION=1.95

############################################################################################
FROM rust:${RUST_VERSION}-bookworm AS builder
# The full (non-slim) rust image already carries pkg-config and libssl-dev for openssl-sys,
# and gcc for the bundled SQLite.
WORKDIR /build

# 1. Dependencies only, in their own layer: copy the manifests, build a dummy crate. This
#    layer is rebuilt only when Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
#    Then forget the dummy crate's own artifacts, so that the real one is always rebuilt
#    whatever the modification times of the copied sources are.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin cio-gateway \
    && rm -rf src \
    && rm -rf target/release/.fingerprint/cio-gateway-* \
              target/release/deps/cio_gateway-* \
              target/release/deps/libcio_gateway-* \
              target/release/cio-gateway

# 2. The real source. .dockerignore is an allow-list (manifests, src/, config/, migrations/,
#    docs/*.json which the binary embeds), so this copies only what the build reads.
COPY . .
#    The source revision for cio_gateway_build_info (.git is not in the context):
#    docker build --build-arg CIO_GATEWAY_REVISION="$(git rev-parse --short=12 HEAD)" .
ARG CIO_GATEWAY_REVISION=""
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --bin cio-gateway \
    && mkdir -p /out/data \
    && cp target/release/cio-gateway /out/cio-gateway

############################################################################################
# Runtime: distroless "cc" for Debian 12. It holds glibc, libgcc, libssl3 (OpenSSL 3, what
# native-tls links), ca-certificates and tzdata, and nothing else: no shell, no package
# manager. That is everything this binary loads (SQLite is compiled in), and it is the same
# bookworm OpenSSL 3.0 ABI the builder linked against, so no apt-installed base is needed.
# For an interactive debug shell, use the `debug-nonroot` tag of the same image instead.
FROM gcr.io/distroless/cc-debian12:nonroot

# The gateway runs as uid/gid 10001, the same ids the Helm chart's securityContext enforces
# (runAsUser 10001). The numeric form needs no /etc/passwd entry.
USER 10001:10001
WORKDIR /app

# The binary only: no toolchain, no sources.
COPY --from=builder /out/cio-gateway /usr/local/bin/cio-gateway
# config/default.toml and config/production.toml: read from ./config, i.e. /app/config. The
# chart mounts its rendered production.toml over the image's copy.
COPY config/ /app/config/
# Local mode and the file warehouse write under ./data (/app/data). In Kubernetes this is an
# emptyDir (the root filesystem is read-only there); for plain `docker run` it must exist
# and belong to the runtime user.
COPY --from=builder --chown=10001:10001 /out/data /app/data

EXPOSE 8080
# No HEALTHCHECK: the image has no shell or HTTP client to run one, and Kubernetes probes
# GET /healthz and GET /readyz directly (see the Helm chart).
ENTRYPOINT ["/usr/local/bin/cio-gateway"]
CMD ["serve"]
