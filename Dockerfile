# syntax=docker/dockerfile:1
#
# authproxy container image: a static binary on distroless, run as non-root.
#
#   docker build --build-arg VERSION=$(git describe --always --dirty) \
#     --build-arg COMMIT=$(git rev-parse HEAD) -t authproxy .
#   docker run --rm -p 5060:5060/udp -p 5060:5060/tcp -p 9060:9060/tcp \
#     -v "$PWD/authproxy.toml:/etc/authproxy/authproxy.toml:ro" authproxy
#
# Configuration: /etc/authproxy/authproxy.toml. Mount your own, with
# [[listen]] on 0.0.0.0 (and advertise set). The image ships
# config.example.toml there, whose sample passwords authproxy refuses: run
# without a mounted file, the container exits with that error (to run the
# loopback-only demo anyway: docker run authproxy -config
# /etc/authproxy/authproxy.toml -allow-sample-secrets).
#
# Admin listener: the image sets AUTHPROXY_ADMIN__ADDRESS=0.0.0.0:9060, which
# overrides admin.address in any mounted file, so /metrics is there for
# Prometheus and the HEALTHCHECK below finds /healthz whatever the file
# says. Change it with -e AUTHPROXY_ADMIN__ADDRESS=127.0.0.1:9060 (loopback
# only; keep port 9060 or override HEALTHCHECK).
#
# HEALTHCHECK: distroless has no shell or curl, so the binary probes itself
# (authproxy -healthcheck URL) on 127.0.0.1:9060/healthz.
#
# Base images are pinned by tag; pin them by digest too with
#   --build-arg GOLANG_DIGEST=@sha256:<digest>
#   --build-arg DISTROLESS_DIGEST=@sha256:<digest>
# where <digest> is what `crane digest golang:1.26` and
# `crane digest gcr.io/distroless/static-debian12:nonroot` (or
# `docker buildx imagetools inspect`) print on the day you build: FROM then
# reads image:tag@sha256:..., and the registry must serve exactly that
# manifest. Empty (the default), the tag alone decides.
#
# Stop: SIGTERM drains (proxy.shutdown_grace, default 5s) within docker
# stop's default 10s. Reload: docker kill --signal=HUP <container>.
#
# cmd/authproxy/dockerfile_test.go checks this file and builds the binary
# with the same command as the build stage below (no Docker needed).

ARG GO_VERSION=1.26
ARG GOLANG_DIGEST=
ARG DISTROLESS_DIGEST=

FROM golang:${GO_VERSION}${GOLANG_DIGEST} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The build context has no .git (.dockerignore), so the version and commit
# that authproxy -version prints come in as build arguments.
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/authproxy ./cmd/authproxy
RUN /out/authproxy -check -allow-sample-secrets -config config.example.toml
# The state file's directory ([state] backend = "file"), owned by nonroot:
# the image has no shell to make it, and /etc/authproxy is not writable.
RUN mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot${DISTROLESS_DIGEST}
COPY --from=build /out/authproxy /usr/local/bin/authproxy
COPY --from=build /src/config.example.toml /etc/authproxy/authproxy.toml
COPY --from=build --chown=nonroot:nonroot /out/state /var/lib/authproxy
ENV AUTHPROXY_STATE__DIR=/var/lib/authproxy
VOLUME /var/lib/authproxy
ENV AUTHPROXY_ADMIN__ADDRESS=0.0.0.0:9060
USER nonroot:nonroot
EXPOSE 5060/udp 5060/tcp 9060/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
	CMD ["/usr/local/bin/authproxy", "-healthcheck", "http://127.0.0.1:9060/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/authproxy"]
CMD ["-config", "/etc/authproxy/authproxy.toml"]
