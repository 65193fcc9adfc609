# Multi-stage build of every Twin binary; the runtime image is distroless and non-root.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
    && mkdir -p /out \
    && for b in twin-sidecar twin-control-plane twinctl twin-chaos; do \
         [ -f target/release/$b ] && cp target/release/$b /out/; \
       done

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/twin-sidecar"]
