# Multi-stage build: one image with every binary; the container's command picks the role.
#   docker build -t cdn .
#   docker run --rm -p 8000:8000 cdn cdn-cluster --edge-port 8000   # whole system, one container
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
        -p cdn-cluster -p cache-node -p edge -p origin-stub -p loadgen -p cdnctl \
 && mkdir /out \
 && cp target/release/cdn-cluster target/release/cache-node target/release/edge \
       target/release/origin-stub target/release/loadgen target/release/cdnctl /out/

# No OpenSSL or other shared libraries to carry: TLS is rustls with ring, linked in.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home cdn
COPY --from=build /out/ /usr/local/bin/
USER 10001
# Edge clients (HTTP), node QUIC (UDP), admin APIs.
EXPOSE 8000/tcp 4433/udp 9000/tcp 9050/tcp
ENTRYPOINT []
CMD ["cdn-cluster", "--edge-port", "8000"]
