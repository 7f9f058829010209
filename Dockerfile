# syntax=docker/dockerfile:1
# One image with both binaries: the engine (`keyflow`) and the shopping-cart function service
# (`shopping-cart-functions`), plus module.yaml and the playthrough scripts.
# docker-compose.yml builds it and runs every part of the stack from it.
#
#   docker build -t keyflow:local .

# --- build -------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
# cmake builds librdkafka (rdkafka's cmake-build feature); protoc compiles the .proto files.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches keep the registry and the build between image builds; the binaries are copied
# out of the cached target directory within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --bins --locked \
    && mkdir -p /out \
    && cp target/release/keyflow target/release/shopping-cart-functions /out/

# --- run ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libcurl4 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin keyflow
COPY --from=build /out/keyflow /out/shopping-cart-functions /usr/local/bin/
WORKDIR /app
COPY module.yaml /app/module.yaml
COPY playthrough/ /app/playthrough/
RUN mkdir -p /app/.data && chown keyflow:keyflow /app/.data
USER keyflow
ENV KEYFLOW_MODULE=/app/module.yaml \
    KEYFLOW_DATA_DIR=/app/.data \
    KEYFLOW_BIN=/usr/local/bin/keyflow \
    NO_COLOR=1
# 1108: the function service; 8090: an engine worker's admin server (/ready, /metrics, /status).
EXPOSE 1108 8090
CMD ["keyflow", "--help"]
