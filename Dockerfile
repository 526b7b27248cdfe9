# syntax=docker/dockerfile:1.7
#
# The image of the four Trade Assurance services and the sandbox payment
# gateway. One image, five binaries; the Helm chart (deploy/helm/trade-assurance)
# picks one per Deployment with `command` (the gateway only with
# gatewaySandbox.enabled). Build from the repository root:
#
#   docker build -t <registry>/trade-assurance/services:<version> .
#
# Stage 1 builds every binary in release mode (no system protoc needed: the
# proto crate compiles with protox). Stage 2 is distroless: glibc and
# libgcc, no shell, no package manager, user 65532.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# The workspace's sources only (see .dockerignore).
COPY . .
# The cache mounts keep the registry and the target directory between builds;
# the binaries are copied out of the cache, so the next stage can see them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && cp target/release/supplier-registry target/release/contract \
       target/release/escrow target/release/dispute \
       target/release/payment-gateway-sandbox /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
# checkov:skip=CKV_DOCKER_2: No HEALTHCHECK instruction: the image runs on Kubernetes, whose native gRPC liveness and readiness probes (service names `liveness` and "") ask the process itself, and the distroless image has no shell or probe binary to run one.
LABEL org.opencontainers.image.title="trade-assurance" \
      org.opencontainers.image.description="supplier-registry, contract, escrow and dispute gRPC services, and the sandbox payment gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
# The service binaries and nothing else. mint-token, the dev token tool, stays
# out: a production image has no use for a signer.
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# supplier-registry, contract, escrow (and its webhooks, 50063), dispute (set
# GRPC_LISTEN_ADDR=0.0.0.0:<port>); the sandbox gateway (GATEWAY_SANDBOX_LISTEN_ADDR).
EXPOSE 50051 50052 50053 50054 50060 50063
# The chart sets the command; without one, the image runs supplier-registry.
ENTRYPOINT ["/usr/local/bin/supplier-registry"]
