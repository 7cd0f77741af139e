package state

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisConfig says how to reach a Redis (or Valkey) server.
type RedisConfig struct {
	// Address is host:port.
	Address string
	// Username and Password authenticate (AUTH); empty: none. The
	// password is read from password_env or password_file by config.
	Username string
	Password string
	// DB is the database number.
	DB int
	// TLS, when set, makes the connection TLS with this configuration.
	TLS *tls.Config
	// Prefix starts every key authproxy writes, so that several
	// deployments can share one server.
	Prefix string
	// Timeout bounds each command (dial, read, write). Zero means 500ms.
	Timeout time.Duration
}

// defaultRedisTimeout bounds a command: a loopback or LAN round trip is
// well under a millisecond, so 500 ms only passes when the server or the
// network is in trouble, and the proxy then serves from local state.
const defaultRedisTimeout = 500 * time.Millisecond

// Redis is a Store on a Redis server, shared by every instance pointed at
// it. Keys expire with Redis's own TTLs; leases are keys written with SET
// NX PX, their fencing token an INCR counter beside them.
type Redis struct {
	c      *redis.Client
	prefix string
}

// OpenRedis connects to the server (lazily: a server down at start is
// not an error here; Ping says whether it answers).
func OpenRedis(cfg RedisConfig) (*Redis, error) {
	if cfg.Address == "" {
		return nil, errors.New("redis: no address")
	}
	quietOnce.Do(func() { redis.SetLogger(quietLog{}) })
	t := cfg.Timeout
	if t <= 0 {
		t = defaultRedisTimeout
	}
	c := redis.NewClient(&redis.Options{
		Addr: cfg.Address, Username: cfg.Username, Password: cfg.Password, DB: cfg.DB,
		TLSConfig:   cfg.TLS,
		DialTimeout: t, ReadTimeout: t, WriteTimeout: t,
		// One retry: the caller retries with its own backoff and falls
		// back to local state meanwhile.
		MaxRetries:      1,
		DisableIdentity: true,
		Protocol:        2,
	})
	return &Redis{c: c, prefix: cfg.Prefix}, nil
}

// quietLog drops go-redis's own log lines (one per failed dial, on
// stderr): the proxy logs the store's state once per change instead.
type quietLog struct{}

func (quietLog) Printf(context.Context, string, ...any) {}

var quietOnce sync.Once

func (r *Redis) k(key string) string { return r.prefix + key }

// Put implements Store.
func (r *Redis) Put(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if ttl < 0 {
		ttl = 0
	}
	if err := r.c.Set(ctx, r.k(key), value, ttl).Err(); err != nil {
		return fmt.Errorf("redis set: %w", err)
	}
	return nil
}

// Get implements Store.
func (r *Redis) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := r.c.Get(ctx, r.k(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redis get: %w", err)
	}
	return v, nil
}

// Delete implements Store.
func (r *Redis) Delete(ctx context.Context, key string) error {
	if err := r.c.Del(ctx, r.k(key)).Err(); err != nil {
		return fmt.Errorf("redis del: %w", err)
	}
	return nil
}

// globEscape quotes the characters SCAN's MATCH pattern treats specially.
func globEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[]\^`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// scanBatch is SCAN's COUNT hint: keys examined per round trip.
const scanBatch = 500

// Scan implements Store.
func (r *Redis) Scan(ctx context.Context, prefix string, fn func(string, []byte) error) error {
	match := globEscape(r.k(prefix)) + "*"
	var cursor uint64
	for {
		keys, next, err := r.c.Scan(ctx, cursor, match, scanBatch).Result()
		if err != nil {
			return fmt.Errorf("redis scan: %w", err)
		}
		if len(keys) > 0 {
			vals, err := r.c.MGet(ctx, keys...).Result()
			if err != nil {
				return fmt.Errorf("redis mget: %w", err)
			}
			for i, v := range vals {
				s, ok := v.(string)
				if !ok {
					continue // expired between SCAN and MGET
				}
				if err := fn(strings.TrimPrefix(keys[i], r.prefix), []byte(s)); err != nil {
					return err
				}
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// Add implements Store: INCRBY and PEXPIRE per key, all in one pipeline
// (one round trip).
func (r *Redis) Add(ctx context.Context, deltas map[string]int64, ttl time.Duration) (map[string]int64, error) {
	keys := make([]string, 0, len(deltas))
	cmds := make([]*redis.IntCmd, 0, len(deltas))
	_, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for k, d := range deltas {
			keys = append(keys, k)
			cmds = append(cmds, p.IncrBy(ctx, r.k(k), d))
			if ttl > 0 {
				p.PExpire(ctx, r.k(k), ttl)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redis incrby: %w", err)
	}
	out := make(map[string]int64, len(keys))
	for i, k := range keys {
		out[k] = cmds[i].Val()
	}
	return out, nil
}

const tokenPrefix = "token/"

// renewScript extends a lease only when it still holds the caller's value.
var renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)

// releaseScript deletes a lease only when it still holds the caller's value.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// Acquire implements Store: the token comes from INCR, the lease is SET
// NX PX, so of two instances racing for it exactly one gets it. A holder
// acquiring its own lease again renews it.
func (r *Redis) Acquire(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error) {
	if cur, err := r.c.Get(ctx, r.k(leasePrefix+name)).Result(); err == nil {
		if h, t, ok := parseLeaseValue(cur); ok && h == holder {
			return r.Renew(ctx, Lease{Name: name, Holder: holder, Token: t}, ttl)
		}
		return Lease{}, ErrHeld
	} else if !errors.Is(err, redis.Nil) {
		return Lease{}, fmt.Errorf("redis get lease: %w", err)
	}
	// The counter starts at the clock (milliseconds), so that tokens keep
	// growing even after a server without persistence restarted empty.
	if err := r.c.SetNX(ctx, r.k(tokenPrefix+name), time.Now().UnixMilli(), 0).Err(); err != nil {
		return Lease{}, fmt.Errorf("redis init token: %w", err)
	}
	t, err := r.c.Incr(ctx, r.k(tokenPrefix+name)).Result()
	if err != nil {
		return Lease{}, fmt.Errorf("redis incr token: %w", err)
	}
	l := Lease{Name: name, Holder: holder, Token: uint64(t), Expires: time.Now().Add(ttl)}
	ok, err := r.c.SetNX(ctx, r.k(leasePrefix+name), leaseValue(holder, l.Token), ttl).Result()
	if err != nil {
		return Lease{}, fmt.Errorf("redis set lease: %w", err)
	}
	if !ok {
		return Lease{}, ErrHeld
	}
	return l, nil
}

// Renew implements Store.
func (r *Redis) Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	n, err := renewScript.Run(ctx, r.c, []string{r.k(leasePrefix + l.Name)}, leaseValue(l.Holder, l.Token), ttl.Milliseconds()).Int()
	if err != nil {
		return l, fmt.Errorf("redis renew lease: %w", err)
	}
	if n == 0 {
		return l, ErrLost
	}
	l.Expires = time.Now().Add(ttl)
	return l, nil
}

// Release implements Store.
func (r *Redis) Release(ctx context.Context, l Lease) error {
	if err := releaseScript.Run(ctx, r.c, []string{r.k(leasePrefix + l.Name)}, leaseValue(l.Holder, l.Token)).Err(); err != nil {
		return fmt.Errorf("redis release lease: %w", err)
	}
	return nil
}

// Leases implements Store.
func (r *Redis) Leases(ctx context.Context) ([]Lease, error) {
	var out []Lease
	err := r.Scan(ctx, leasePrefix, func(k string, v []byte) error {
		if h, t, ok := parseLeaseValue(string(v)); ok {
			l := Lease{Name: strings.TrimPrefix(k, leasePrefix), Holder: h, Token: t}
			if ms, err := r.c.PTTL(ctx, r.k(k)).Result(); err == nil && ms > 0 {
				l.Expires = time.Now().Add(ms)
			}
			out = append(out, l)
		}
		return nil
	})
	return out, err
}

// Shared implements Store.
func (r *Redis) Shared() bool { return true }

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error {
	if err := r.c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis ping: %w", err)
	}
	return nil
}

// Close implements Store.
func (r *Redis) Close() error { return r.c.Close() }

// String names the store for logs (never the password).
func (r *Redis) String() string {
	return "redis " + r.c.Options().Addr + " db " + strconv.Itoa(r.c.Options().DB)
}
