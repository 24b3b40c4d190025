# portcullis in a container: built in a Rust image, run from Debian slim as an unprivileged
# user. Untested here (no container builds on the development machines); see
# docs/install.md. Build: docker build -t portcullis .
# Run:   docker run -p 8080:8080 -v $PWD/portcullis.yaml:/etc/portcullis/portcullis.yaml:ro portcullis
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin portcullis

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin portcullis
COPY --from=build /src/target/release/portcullis /usr/bin/portcullis
COPY packaging/portcullis.yaml /etc/portcullis/portcullis.yaml
USER portcullis
EXPOSE 8080 9901
# Probes and scrapes reach the admin listener (/healthz, /readyz, /metrics) only when it listens
# beyond the container's loopback: set server.admin to "0.0.0.0:9901" in the mounted file.
ENTRYPOINT ["/usr/bin/portcullis"]
CMD ["run", "-c", "/etc/portcullis/portcullis.yaml"]
