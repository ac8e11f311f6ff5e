# Multi-stage build of the adflow gateway and worker.
#   docker build -t adflow .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# protoc comes from the protoc-bin-vendored crate; nothing else is needed.
RUN cargo build --release --locked -p adflow-gateway -p adflow-worker \
 && cp target/release/adflow-gateway target/release/adflow-worker /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /data adflow && mkdir -p /data && chown adflow /data
COPY --from=build /usr/local/bin/adflow-gateway /usr/local/bin/adflow-worker /usr/local/bin/
COPY configs /etc/adflow/configs
USER adflow
WORKDIR /data
EXPOSE 50051 9464
ENTRYPOINT ["adflow-gateway"]
CMD ["--config", "/etc/adflow/configs/docker.toml"]
