# The analyzer's container image. Not built by CI (no image registry is
# reachable there); build and push it from the repository root:
#
#   docker build -f envoy-config/istio/analyzer.Dockerfile -t ghcr.io/OWNER/canary-analyzer:0.1.0 .
#
# The runtime image has no shell and runs as 65532, matching the
# Deployment's securityContext (runAsNonRoot, read-only root filesystem).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the workspace needs to resolve; target/ and .cache/ stay out.
COPY Cargo.toml Cargo.lock rust-toolchain.toml rustfmt.toml ./
COPY protocol protocol
COPY filter filter
COPY analyzer analyzer
COPY tests tests
COPY bench bench
COPY xtask xtask
COPY fuzz-checks fuzz-checks
COPY canaryctl canaryctl
RUN cargo build --locked --release -p canary-analyzer --bin canary-analyzer

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/canary-analyzer /usr/local/bin/canary-analyzer
USER 65532:65532
EXPOSE 9190
ENTRYPOINT ["/usr/local/bin/canary-analyzer"]
