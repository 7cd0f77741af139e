package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// probeTimeout bounds -healthcheck: Docker's default HEALTHCHECK timeout is
// 30s, but a local /healthz that takes more than a few seconds is a failure.
const probeTimeout = 3 * time.Second

// probe implements -healthcheck: GET url and exit 0 on a 2xx answer, 1
// otherwise. Distroless and scratch images have no curl or wget, so the
// binary probes itself.
func probe(ctx context.Context, url string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "authproxy: healthcheck: %v\n", err)
		return 1
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "authproxy: healthcheck: %v\n", err)
		return 1
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	if res.StatusCode < 200 || res.StatusCode > 299 {
		fmt.Fprintf(stderr, "authproxy: healthcheck: %s: %s\n", url, res.Status)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s\n", url, res.Status)
	return 0
}
