package state

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// File is a Store in a bbolt file in a data directory: the state survives
// a restart of the one instance that uses it.
//
// Writes are batched: Put and Delete land in a pending set that reads see
// at once, and a background loop commits it every FlushInterval in one
// transaction. bbolt's copy-on-write pages and its two meta pages make a
// commit atomic and fsynced, so a crash loses at most the last interval's
// writes and never leaves a corrupt file. bbolt locks the file (flock):
// a second process opening the same directory fails instead of sharing it.
type File struct {
	db   *bolt.DB
	path string
	log  *slog.Logger
	now  func() time.Time

	// leaseMu serialises the read-modify-write of leases (one process
	// owns the file, so a mutex is the whole protocol).
	leaseMu sync.Mutex

	mu      sync.Mutex
	pending map[string]pendingOp
	tokens  map[string]uint64 // lease tokens not yet committed
	gen     uint64            // numbers the writes, so a commit knows which it covered
	closed  bool

	stop chan struct{}
	done chan struct{}
}

type pendingOp struct {
	del     bool
	value   []byte
	expires time.Time
	gen     uint64
}

// FileName is the name of the database file in the data directory.
const FileName = "authproxy.db"

// FlushInterval is how often File commits its pending writes: what a crash
// can lose, and one fsync a second whatever the load.
const FlushInterval = time.Second

// fileSweepEvery is how often expired keys are removed from the file.
const fileSweepEvery = time.Minute

// openLockWait bounds the wait for another process's lock on the file.
const openLockWait = 2 * time.Second

var (
	bucketKV     = []byte("kv")
	bucketTokens = []byte("tokens")
)

// OpenFile opens (creating it and the directory when missing) the state
// file in dir.
func OpenFile(dir string, log *slog.Logger) (*File, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: openLockWait})
	if err != nil {
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketKV, bucketTokens} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	f := &File{db: db, path: path, log: log, now: time.Now, pending: map[string]pendingOp{}, tokens: map[string]uint64{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go f.loop()
	return f, nil
}

// Pending counts the writes not committed to the file yet.
func (f *File) Pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pending) + len(f.tokens)
}

// Path is the database file.
func (f *File) Path() string { return f.path }

func (f *File) loop() {
	defer close(f.done)
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	lastSweep := f.now()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		if err := f.Flush(); err != nil {
			f.log.Warn("state file commit failed; retrying", "path", f.path, "error", err)
		}
		if now := f.now(); now.Sub(lastSweep) >= fileSweepEvery {
			lastSweep = now
			if err := f.sweep(now); err != nil {
				f.log.Warn("state file sweep failed", "path", f.path, "error", err)
			}
		}
	}
}

// Flush commits the pending writes now. They stay pending, visible to
// reads and counted by Pending, until the commit has returned: a write
// is never in neither place.
func (f *File) Flush() error {
	f.mu.Lock()
	if len(f.pending) == 0 && len(f.tokens) == 0 {
		f.mu.Unlock()
		return nil
	}
	ops, toks := maps.Clone(f.pending), maps.Clone(f.tokens)
	f.mu.Unlock()
	err := f.db.Update(func(tx *bolt.Tx) error {
		kv, tb := tx.Bucket(bucketKV), tx.Bucket(bucketTokens)
		for k, op := range ops {
			var err error
			if op.del {
				err = kv.Delete([]byte(k))
			} else {
				err = kv.Put([]byte(k), encodeItem(op.value, op.expires))
			}
			if err != nil {
				return err
			}
		}
		for name, t := range toks {
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], t)
			if err := tb.Put([]byte(name), b[:]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit state: %w", err)
	}
	// Forget what the commit covered, unless a newer write replaced it
	// meanwhile (that one waits for the next commit).
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, op := range ops {
		if cur, ok := f.pending[k]; ok && cur.gen == op.gen {
			delete(f.pending, k)
		}
	}
	for n, t := range toks {
		if f.tokens[n] == t {
			delete(f.tokens, n)
		}
	}
	return nil
}

func (f *File) sweep(now time.Time) error {
	return f.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketKV).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if _, exp, ok := decodeItem(v); ok && !exp.IsZero() && !now.Before(exp) {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// encodeItem lays a value out as its expiry (Unix nanoseconds, 0: never)
// followed by the bytes.
func encodeItem(v []byte, exp time.Time) []byte {
	b := make([]byte, 8+len(v))
	if !exp.IsZero() {
		binary.BigEndian.PutUint64(b, uint64(exp.UnixNano()))
	}
	copy(b[8:], v)
	return b
}

func decodeItem(b []byte) ([]byte, time.Time, bool) {
	if len(b) < 8 {
		return nil, time.Time{}, false
	}
	var exp time.Time
	if n := binary.BigEndian.Uint64(b); n != 0 {
		exp = time.Unix(0, int64(n))
	}
	return append([]byte(nil), b[8:]...), exp, true
}

func (f *File) put(key string, op pendingOp) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	f.gen++
	op.gen = f.gen
	f.pending[key] = op
	return nil
}

// Put implements Store.
func (f *File) Put(_ context.Context, key string, value []byte, ttl time.Duration) error {
	return f.put(key, pendingOp{value: append([]byte(nil), value...), expires: expiry(f.now(), ttl)})
}

// Delete implements Store.
func (f *File) Delete(_ context.Context, key string) error {
	return f.put(key, pendingOp{del: true})
}

// get reads key: a pending write first, then the file.
func (f *File) get(key string) ([]byte, time.Time, error) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, time.Time{}, ErrClosed
	}
	op, ok := f.pending[key]
	f.mu.Unlock()
	if ok {
		if op.del {
			return nil, time.Time{}, ErrNotFound
		}
		return append([]byte(nil), op.value...), op.expires, nil
	}
	var v []byte
	var exp time.Time
	err := f.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketKV).Get([]byte(key))
		if raw == nil {
			return ErrNotFound
		}
		var ok bool
		if v, exp, ok = decodeItem(raw); !ok {
			return ErrNotFound
		}
		return nil
	})
	return v, exp, err
}

// Get implements Store.
func (f *File) Get(_ context.Context, key string) ([]byte, error) {
	v, exp, err := f.get(key)
	if err != nil {
		return nil, err
	}
	if !exp.IsZero() && !f.now().Before(exp) {
		return nil, ErrNotFound
	}
	return v, nil
}

// Scan implements Store.
func (f *File) Scan(ctx context.Context, prefix string, fn func(string, []byte) error) error {
	now := f.now()
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrClosed
	}
	pend := make(map[string]pendingOp, len(f.pending))
	for k, op := range f.pending {
		if strings.HasPrefix(k, prefix) {
			pend[k] = op
		}
	}
	f.mu.Unlock()
	type kv struct {
		k string
		v []byte
	}
	var out []kv
	err := f.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketKV).Cursor()
		p := []byte(prefix)
		for k, raw := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, raw = c.Next() {
			if _, ok := pend[string(k)]; ok {
				continue
			}
			v, exp, ok := decodeItem(raw)
			if ok && (exp.IsZero() || now.Before(exp)) {
				out = append(out, kv{string(k), v})
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("scan state file: %w", err)
	}
	for k, op := range pend {
		if !op.del && (op.expires.IsZero() || now.Before(op.expires)) {
			out = append(out, kv{k, op.value})
		}
	}
	for _, e := range out {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(e.k, e.v); err != nil {
			return err
		}
	}
	return nil
}

// Add implements Store (one process owns the file: the read-modify-write
// needs only the lease mutex).
func (f *File) Add(_ context.Context, deltas map[string]int64, ttl time.Duration) (map[string]int64, error) {
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	now := f.now()
	out := make(map[string]int64, len(deltas))
	for k, d := range deltas {
		var n int64
		if v, exp, err := f.get(k); err == nil && (exp.IsZero() || now.Before(exp)) {
			n, _ = strconv.ParseInt(string(v), 10, 64)
		} else if errors.Is(err, ErrClosed) {
			return nil, err
		}
		n += d
		if err := f.put(k, pendingOp{value: []byte(strconv.FormatInt(n, 10)), expires: expiry(now, ttl)}); err != nil {
			return nil, err
		}
		out[k] = n
	}
	return out, nil
}

// token returns the last fencing token granted for name.
func (f *File) token(name string) (uint64, error) {
	f.mu.Lock()
	t, ok := f.tokens[name]
	f.mu.Unlock()
	if ok {
		return t, nil
	}
	err := f.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketTokens).Get([]byte(name)); len(b) == 8 {
			t = binary.BigEndian.Uint64(b)
		}
		return nil
	})
	return t, err
}

// Acquire implements Store.
func (f *File) Acquire(_ context.Context, name, holder string, ttl time.Duration) (Lease, error) {
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	now := f.now()
	if v, exp, err := f.get(leasePrefix + name); err == nil && (exp.IsZero() || now.Before(exp)) {
		if h, _, _ := parseLeaseValue(string(v)); h != holder {
			return Lease{}, ErrHeld
		}
	}
	t, err := f.token(name)
	if err != nil {
		return Lease{}, fmt.Errorf("lease %s: %w", name, err)
	}
	l := Lease{Name: name, Holder: holder, Token: t + 1, Expires: expiry(now, ttl)}
	f.mu.Lock()
	f.tokens[name] = l.Token
	f.mu.Unlock()
	return l, f.put(leasePrefix+name, pendingOp{value: []byte(leaseValue(holder, l.Token)), expires: l.Expires})
}

// Renew implements Store.
func (f *File) Renew(_ context.Context, l Lease, ttl time.Duration) (Lease, error) {
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	now := f.now()
	v, exp, err := f.get(leasePrefix + l.Name)
	if err != nil || (!exp.IsZero() && !now.Before(exp)) || string(v) != leaseValue(l.Holder, l.Token) {
		return l, ErrLost
	}
	l.Expires = expiry(now, ttl)
	return l, f.put(leasePrefix+l.Name, pendingOp{value: v, expires: l.Expires})
}

// Release implements Store.
func (f *File) Release(_ context.Context, l Lease) error {
	f.leaseMu.Lock()
	defer f.leaseMu.Unlock()
	if v, _, err := f.get(leasePrefix + l.Name); err == nil && string(v) == leaseValue(l.Holder, l.Token) {
		return f.put(leasePrefix+l.Name, pendingOp{del: true})
	}
	return nil
}

// Leases implements Store.
func (f *File) Leases(ctx context.Context) ([]Lease, error) {
	var out []Lease
	err := f.Scan(ctx, leasePrefix, func(k string, v []byte) error {
		if h, t, ok := parseLeaseValue(string(v)); ok {
			out = append(out, Lease{Name: strings.TrimPrefix(k, leasePrefix), Holder: h, Token: t})
		}
		return nil
	})
	return out, err
}

// Shared implements Store: one process owns the file.
func (f *File) Shared() bool { return false }

// Ping implements Store.
func (f *File) Ping(context.Context) error { return nil }

// Close commits what is pending and closes the file.
func (f *File) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.mu.Unlock()
	close(f.stop)
	<-f.done
	err := f.Flush()
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	if cerr := f.db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close state file: %w", cerr)
	}
	return err
}
