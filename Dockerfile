# Multi-stage build: one image with every binary; the container's command picks the role.
#   docker build -t cdn .
#   docker run --rm --network host cdn cdn-cluster --edge-port 8000   # whole system, one container
# (cdn-cluster listens on 127.0.0.1 only, so it needs the host's network: a published port
# (-p) reaches the container's own address, where nothing listens.)
FROM rust:1.95-bookworm AS build
# PREBUILT: a directory of the build context holding the six binaries, already built for
# bookworm (glibc <= 2.36); the build stage then copies them instead of running cargo.
# deploy/container-smoke.sh uses it to feed binaries built on the host. Empty: cargo builds.
ARG PREBUILT=
WORKDIR /src
COPY . .
RUN mkdir /out \
 && if [ -n "$PREBUILT" ]; then \
        cp "$PREBUILT/cdn-cluster" "$PREBUILT/cache-node" "$PREBUILT/edge" \
           "$PREBUILT/origin-stub" "$PREBUILT/loadgen" "$PREBUILT/cdnctl" /out/; \
    else \
        cargo build --release --locked \
            -p cdn-cluster -p cache-node -p edge -p origin-stub -p loadgen -p cdnctl \
     && cp target/release/cdn-cluster target/release/cache-node target/release/edge \
           target/release/origin-stub target/release/loadgen target/release/cdnctl /out/; \
    fi

# No OpenSSL or other shared libraries to carry: TLS is rustls with ring, linked in.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home cdn
COPY --from=build /out/ /usr/local/bin/
USER 10001
# Edge clients (HTTP), node QUIC (UDP), admin APIs.
EXPOSE 8000/tcp 4433/udp 9000/tcp 9050/tcp
ENTRYPOINT []
CMD ["cdn-cluster", "--edge-port", "8000"]
