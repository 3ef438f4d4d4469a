# syntax=docker/dockerfile:1
# The waimai node image: a Rust build stage, then a small Debian runtime with the binary alone.
#
#   docker build -t waimai .
#   docker run --rm -p 8080:8080 -e WAIMAI__AUTH__JWT_SECRET="$(openssl rand -hex 32)" \
#     -e WAIMAI__PAYMENTS__HMAC_SECRET="$(openssl rand -hex 32)" waimai
#
# (a node refuses to listen on 0.0.0.0 with the development secrets shipped in config.yaml).
#
# The runtime listens on 0.0.0.0:8080 and, with no other store configured, keeps SQLite under
# /var/lib/waimai/data (mount a volume there to keep it). Configure it like any node: a file given
# with `--config` and WAIMAI__SECTION__KEY variables (see deploy/k8s/ for a cluster).

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
# rust:*-bookworm already has gcc and make. Listed anyway because the build must not depend on
# it: librdkafka (bundled by rdkafka-sys, built with its own ./configure and `make libs`) needs
# make, gcc and g++ (it also builds its C++ wrapper), pkg-config and zlib1g-dev for its zlib
# codec, and python3 for its linker script (configure drops the script without it).
# Unpinned on purpose: bookworm's point releases replace these versions in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make gcc g++ pkg-config zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock config.yaml ./
# .cargo/config.toml: the bundled SQLite's build flags, as in every other build.
COPY .cargo ./.cargo
COPY src ./src
COPY benches ./benches
# Cargo's registry and the target directory are BuildKit caches, so a rebuild after a source
# change recompiles only the crate. The release profile keeps line tables (debug = 1) for perf on
# a developer machine; the image does not need them, only symbol names for backtraces.
ARG RELEASE_DEBUG=0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=${RELEASE_DEBUG} cargo build --release --locked --bin waimai \
 && install -m 0755 target/release/waimai /usr/local/bin/waimai

FROM debian:bookworm-slim
# ca-certificates for TLS to a managed database or broker. Nothing else: the binary links only
# glibc, libgcc_s (and zlib once rdkafka arrives), all in the slim base. No curl or wget: see
# HEALTHCHECK.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 waimai \
 && useradd --system --uid 10001 --gid waimai --home-dir /var/lib/waimai --create-home \
      --shell /usr/sbin/nologin waimai
COPY --from=build /usr/local/bin/waimai /usr/local/bin/waimai
WORKDIR /var/lib/waimai
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
ENV WAIMAI__SERVER__LISTEN=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
# The node drains on SIGTERM (stop accepting, drain mailboxes, flush writes) within
# server.shutdown_grace_ms; give `docker stop` more than that: `docker stop -t 30`.
STOPSIGNAL SIGTERM
# Readiness (store and lock backend reachable), asked through bash's /dev/tcp instead of curl or
# wget: either would add a dozen libraries (TLS, LDAP, Kerberos, ...) to an image whose only
# client of this check is Docker itself; Kubernetes ignores HEALTHCHECK and uses the pod's probes.
# The port is the image's default listen address; change both together.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["waimai", "serve"]
