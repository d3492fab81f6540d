# tillit: the control-plane binary on a slim base.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin tillit

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tillit /usr/local/bin/tillit
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tillit"]
CMD ["--help"]
