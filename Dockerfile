# syntax=docker/dockerfile:1
#
# authproxy container image: a static binary on distroless, run as non-root.
#
#   docker build --build-arg VERSION=$(git describe --always --dirty) \
#     --build-arg COMMIT=$(git rev-parse HEAD) -t authproxy .
#   docker run --rm -p 5060:5060/udp -p 5060:5060/tcp -p 9060:9060/tcp \
#     -v "$PWD/authproxy.toml:/etc/authproxy/authproxy.toml:ro" authproxy
#
# Configuration: /etc/authproxy/authproxy.toml. The image ships
# config.example.toml there, which runs but listens on loopback only; mount
# your own, with [[listen]] on 0.0.0.0 (and advertise set) and
# [admin] address = "0.0.0.0:9060" for Prometheus to scrape.
#
# HEALTHCHECK: distroless has no shell or curl, so the binary probes itself
# (authproxy -healthcheck URL) on 127.0.0.1:9060/healthz. Keep the admin
# listener on port 9060 (127.0.0.1 or 0.0.0.0), or override HEALTHCHECK.
#
# Stop: SIGTERM drains (proxy.shutdown_grace, default 5s) within docker
# stop's default 10s. Reload: docker kill --signal=HUP <container>.
#
# cmd/authproxy/dockerfile_test.go checks this file and builds the binary
# with the same command as the build stage below (no Docker needed).

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The build context has no .git (.dockerignore), so the version and commit
# that authproxy -version prints come in as build arguments.
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/authproxy ./cmd/authproxy
RUN /out/authproxy -check -config config.example.toml
# The state file's directory ([state] backend = "file"), owned by nonroot:
# the image has no shell to make it, and /etc/authproxy is not writable.
RUN mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/authproxy /usr/local/bin/authproxy
COPY --from=build /src/config.example.toml /etc/authproxy/authproxy.toml
COPY --from=build --chown=nonroot:nonroot /out/state /var/lib/authproxy
ENV AUTHPROXY_STATE__DIR=/var/lib/authproxy
VOLUME /var/lib/authproxy
USER nonroot:nonroot
EXPOSE 5060/udp 5060/tcp 9060/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
	CMD ["/usr/local/bin/authproxy", "-healthcheck", "http://127.0.0.1:9060/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/authproxy"]
CMD ["-config", "/etc/authproxy/authproxy.toml"]
