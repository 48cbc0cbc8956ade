# levee's container image: a static (musl) binary on distroless, running as a non-root user.
#   docker build -t levee:dev .        (make image)
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# musl is Alpine's native target: the binary is statically linked (rustls, no OpenSSL).
RUN cargo build --release --locked --bin levee && cp target/release/levee /levee

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /levee /levee
USER 65532:65532
EXPOSE 6443 8080
ENTRYPOINT ["/levee"]
CMD ["run"]
