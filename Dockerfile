# syntax=docker/dockerfile:1
# Builds octopus as a fully static musl binary and ships it alone in a scratch image: no shell, no
# libc, no certificates (the TLS roots are compiled in). Native builds for amd64 and arm64 hosts:
# the builder's own architecture names the musl target.

FROM rust:1.95-bookworm AS build
# musl-gcc compiles ring's and SQLite's C for the musl target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The standard library is compiled from source without its backtrace symboliser and with its
# size-optimised routines, as scripts/build-static does (about 420 KB smaller); RUSTC_BOOTSTRAP
# allows -Zbuild-std on the stable compiler. The data directory is made here because scratch has
# no shell to make it; 65532 is the conventional "nonroot" id, owning only that directory.
RUN target="$(uname -m)-unknown-linux-musl" \
    && rustup target add "$target" \
    && rustup component add rust-src \
    && RUSTC_BOOTSTRAP=1 CC_x86_64_unknown_linux_musl=musl-gcc CC_aarch64_unknown_linux_musl=musl-gcc \
       cargo build --release --locked --target "$target" \
       -Zbuild-std=std,panic_abort,panic_unwind -Zbuild-std-features=panic-unwind,optimize_for_size \
    && mkdir -p /rootfs/data \
    && cp "target/$target/release/octopus" /rootfs/octopus \
    && chown 65532:65532 /rootfs/data \
    && chmod 0700 /rootfs/data

FROM scratch
COPY --from=build /rootfs /
USER 65532:65532
# The gateway's default paths are relative (data/config.json, data/data.db): from / they are the
# volume. Every config key can be set with OCTOPUS_* variables instead of editing the file.
WORKDIR /
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/octopus", "healthcheck"]
ENTRYPOINT ["/octopus"]
CMD ["start"]
