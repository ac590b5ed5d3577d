# Multi-stage build: compile a release binary, then ship it alone on a minimal glibc base.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/octopus /octopus

# distroless/cc has glibc and libgcc and nothing else; TLS roots are compiled into the binary.
FROM gcr.io/distroless/cc-debian12
WORKDIR /app
COPY --from=build /octopus /app/octopus
VOLUME ["/app/data"]
EXPOSE 8080
ENTRYPOINT ["/app/octopus", "start"]
