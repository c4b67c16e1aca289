# syntax=docker/dockerfile:1
# All of notify's binaries in one image: notify (CLI and `notify up`),
# notify-svc, bridge and bet-tracker. Pick one with the command:
#   docker run --rm notify notify-svc --help
#
# Build stage: the workspace's release profile. protoc comes from the
# protoc-bin-vendored crate, so the builder needs nothing but Rust and a C
# compiler (rusqlite's bundled SQLite, aws-lc-rs).
FROM rust:1.95-slim-bookworm AS build
# The commit /info reports (.git is not in the build context):
#   docker build --build-arg NOTIFY_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG NOTIFY_BUILD_COMMIT=unknown
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target between builds; the binaries are
# copied out of the cache before the layer ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && cp target/release/notify target/release/notify-svc target/release/bridge \
       target/release/bet-tracker target/release/notify-ingest /out/

# Runtime stage: Debian slim, CA roots for Cognito's JWKS and RDS, no shell
# tools beyond the base, a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/notify --create-home notify
COPY --from=build /out/ /usr/local/bin/
USER notify
WORKDIR /var/lib/notify
# gRPC, WebSocket, and the ops ports of notify-svc / bridge / bet-tracker.
EXPOSE 50051 8080 9464 9465 9466
ENV RUST_LOG=info
CMD ["notify", "up"]
