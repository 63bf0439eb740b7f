# One image for every veil component: veil-ca, veil-controller, veil-ztunnel, veil-cni (and
# veil-cni-cleanup, which a stopping ztunnel runs), veil-waypoint,
# and the veil command (`helm test` runs `veil check`).
# For machines with Docker. The image CI builds and tests comes from `cargo xtask image` instead
# (static binaries FROM scratch, no engine or registry needed; docs/install.md): prefer it, since
# veil-cni from this Dockerfile links the build image's glibc and may not run on older nodes, and
# its ztunnel is linked without the layout `cargo xtask image` profiles it for (twice the idle RSS;
# docs/benchmarks.md, "Code layout").
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p veil-ca -p veil-controller -p veil-ztunnel -p veil-waypoint -p veil-cli --bins

FROM debian:bookworm-slim
# ztunnel installs capture rules with iptables-restore inside pods' namespaces (entered with
# nsenter, from util-linux, which the base image has), and with --carry-udp a routing rule with ip.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build \
  /src/target/release/veil-ca \
  /src/target/release/veil-controller \
  /src/target/release/veil-ztunnel \
  /src/target/release/veil-cni \
  /src/target/release/veil-cni-cleanup \
  /src/target/release/veil-waypoint \
  /src/target/release/veil \
  /usr/local/bin/
# Non-root by default; the chart runs ztunnel and the CNI installer as root, nothing else.
USER 65532:65532
