package peers

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RedisConfig configures StartRedis.
type RedisConfig struct {
	// Host is the loopback address to listen on; empty means "127.0.0.1".
	Host string
	// Port is the TCP port; zero picks a free one.
	Port int
	// Password, when set, is required of clients (requirepass).
	Password string
	// TLS makes the port a TLS port (and no plain one), with a
	// self-signed certificate for Host that CAFile returns.
	TLS bool
}

// Redis is a redis-server started by StartRedis: no persistence (no RDB
// snapshot, no append-only file), so a restart starts empty, as a cache
// node that lost its memory does.
type Redis struct {
	t    testing.TB
	cfg  RedisConfig
	bin  string
	dir  string
	proc *Process
}

// redisReadyWait bounds the wait for "Ready to accept connections".
const redisReadyWait = 20 * time.Second

// StartRedis runs redis-server in the foreground on cfg.Host and returns
// once it accepts connections. Cleanup stops it by its PID.
func StartRedis(t testing.TB, cfg RedisConfig) *Redis {
	t.Helper()
	bin, err := LookPath("redis-server")
	if err != nil {
		t.Fatalf("peers: %v (call peers.Require first; %s)", err, InstallHint)
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if err := checkLoopback(cfg.Host); err != nil {
		t.Fatalf("peers: StartRedis: %v", err)
	}
	if cfg.Port == 0 {
		cfg.Port = FreePort(t, cfg.Host)
	}
	r := &Redis{t: t, cfg: cfg, bin: bin, dir: t.TempDir()}
	if cfg.TLS {
		if err := r.writeCert(); err != nil {
			t.Fatalf("peers: redis certificate: %v", err)
		}
	}
	r.Start()
	return r
}

// Addr is the server's host:port.
func (r *Redis) Addr() string {
	return net.JoinHostPort(r.cfg.Host, strconv.Itoa(r.cfg.Port))
}

func (r *Redis) args() []string {
	args := []string{
		"--port", strconv.Itoa(r.cfg.Port), "--bind", r.cfg.Host,
		"--save", "", "--appendonly", "no", "--dir", r.dir,
		"--daemonize", "no", "--protected-mode", "no", "--loglevel", "notice",
	}
	if r.cfg.Password != "" {
		args = append(args, "--requirepass", r.cfg.Password)
	}
	if r.cfg.TLS {
		args[1] = "0" // --port: no plain port
		args = append(args, "--tls-port", strconv.Itoa(r.cfg.Port),
			"--tls-cert-file", r.certFile(), "--tls-key-file", r.keyFile(), "--tls-auth-clients", "no")
	}
	return args
}

// CAFile is the PEM certificate a TLS server presents (self-signed: it is
// its own CA); "" without TLS.
func (r *Redis) CAFile() string {
	if !r.cfg.TLS {
		return ""
	}
	return r.certFile()
}

func (r *Redis) certFile() string { return filepath.Join(r.dir, "redis-cert.pem") }
func (r *Redis) keyFile() string  { return filepath.Join(r.dir, "redis-key.pem") }

// writeCert writes a self-signed certificate for host (an IP address) and
// its key.
func (r *Redis) writeCert() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "peers redis"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP(r.cfg.Host)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(r.certFile(), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(r.keyFile(), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
}

// Start starts the server again on the same address after Stop (empty:
// nothing was persisted).
func (r *Redis) Start() {
	r.t.Helper()
	r.proc = StartProcess(r.t, ProcessConfig{Name: "redis-server " + r.Addr(), Path: r.bin, Args: r.args(), Dir: r.dir})
	ctx, cancel := context.WithTimeout(context.Background(), redisReadyWait)
	defer cancel()
	_, err := r.proc.WaitLine(ctx, func(l string) bool {
		return strings.Contains(l, "Ready to accept connections") || strings.Contains(l, "Address already in use")
	})
	if err != nil {
		r.t.Fatalf("peers: redis-server %s not ready: %v\n%s", r.Addr(), err, r.proc.Output())
	}
	if strings.Contains(r.proc.Output(), "Address already in use") {
		r.t.Fatalf("peers: redis-server %s: address already in use", r.Addr())
	}
}

// Stop stops the server (SIGTERM to its PID, SIGKILL after a grace).
func (r *Redis) Stop() error {
	if err := r.proc.Stop(); err != nil && !isSignalExit(err) {
		return fmt.Errorf("redis-server %s: %w", r.Addr(), err)
	}
	return nil
}
