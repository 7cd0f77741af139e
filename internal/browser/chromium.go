package browser

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/authproxy/authproxy/internal/peers"
	"github.com/authproxy/authproxy/internal/testutil"
)

// Browser is a headless Chromium with one page open, driven through the
// DevTools protocol (CDP) over its WebSocket.
type Browser struct {
	t       testing.TB
	proc    *peers.Process
	conn    net.Conn
	session string // CDP session of the page target (flattened)

	wmu     sync.Mutex
	mu      sync.Mutex
	nextID  int
	pending map[int]chan cdpReply
	console []string
	done    chan struct{}
}

type cdpReply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

type cdpMessage struct {
	ID     int             `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	cdpReply
}

// Launch starts Chromium (headless, fake microphone and camera, media
// permissions granted) with url open, and returns once the page has
// loaded.
func Launch(t testing.TB, url string) *Browser {
	t.Helper()
	bin := chromium()
	proc := peers.StartProcess(t, peers.ProcessConfig{
		Name: "chromium",
		Path: bin,
		Args: []string{
			"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
			"--no-first-run", "--no-default-browser-check", "--disable-extensions",
			"--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
			"--autoplay-policy=no-user-gesture-required",
			"--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
			"--user-data-dir=" + t.TempDir(), "about:blank",
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	line, err := proc.WaitLine(ctx, func(l string) bool { return strings.Contains(l, "DevTools listening on ws://") })
	if err != nil {
		t.Fatalf("browser: chromium did not open its DevTools socket: %v\n%s", err, proc.Output())
	}
	wsURL := line[strings.Index(line, "ws://"):]
	conn, _, _, err := ws.Dialer{Timeout: 10 * time.Second}.Dial(ctx, strings.TrimSpace(wsURL))
	if err != nil {
		t.Fatalf("browser: DevTools socket %s: %v", wsURL, err)
	}
	b := &Browser{t: t, proc: proc, conn: conn, pending: map[int]chan cdpReply{}, done: make(chan struct{})}
	go b.read()
	t.Cleanup(func() {
		_ = conn.Close()
		<-b.done
	})
	var target struct {
		TargetID string `json:"targetId"`
	}
	if err := b.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		t.Fatalf("browser: create page: %v", err)
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	if err := b.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		t.Fatalf("browser: attach to page: %v", err)
	}
	b.session = att.SessionID
	for _, m := range []string{"Runtime.enable", "Page.enable"} {
		if err := b.call(ctx, b.session, m, map[string]any{}, nil); err != nil {
			t.Fatalf("browser: %s: %v", m, err)
		}
	}
	if err := b.call(ctx, b.session, "Page.navigate", map[string]any{"url": url}, nil); err != nil {
		t.Fatalf("browser: navigate to %s: %v", url, err)
	}
	b.WaitTrue(30*time.Second, "the page loaded", "typeof window.startPhone === 'function'")
	return b
}

// read dispatches the replies of the DevTools socket and keeps the page's
// console output.
func (b *Browser) read() {
	defer close(b.done)
	for {
		data, err := wsutil.ReadServerText(b.conn)
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		if m.ID != 0 {
			b.mu.Lock()
			ch := b.pending[m.ID]
			delete(b.pending, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m.cdpReply
			}
			continue
		}
		if m.Method == "Runtime.consoleAPICalled" || m.Method == "Runtime.exceptionThrown" {
			b.mu.Lock()
			b.console = append(b.console, string(m.Params))
			b.mu.Unlock()
		}
	}
}

// call sends one CDP command (to the page's session when session is set)
// and decodes its result into out.
func (b *Browser) call(ctx context.Context, session, method string, params any, out any) error {
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpReply, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	b.wmu.Lock()
	err = wsutil.WriteClientText(b.conn, data)
	b.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case r := <-ch:
		if r.Error != nil {
			return fmt.Errorf("%s: %s", method, r.Error.Message)
		}
		if out != nil {
			return json.Unmarshal(r.Result, out)
		}
		return nil
	case <-b.done:
		return fmt.Errorf("%s: DevTools socket closed", method)
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// Eval evaluates a JavaScript expression in the page and decodes its
// value (JSON) into out, which may be nil; it fails the test it was
// launched for on an error.
func (b *Browser) Eval(expr string, out any) {
	b.t.Helper()
	if err := b.Try(expr, out); err != nil {
		b.t.Fatal(err)
	}
}

// Try is Eval returning the error, for use from subtests.
func (b *Browser) Try(expr string, out any) error {
	if err := b.eval(expr, out); err != nil {
		return fmt.Errorf("%s: %w\nconsole: %s", expr, err, strings.Join(b.Console(), "\n"))
	}
	return nil
}

func (b *Browser) eval(expr string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := b.call(ctx, b.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &res); err != nil {
		return err
	}
	if e := res.ExceptionDetails; e != nil {
		return fmt.Errorf("%s %s", e.Text, e.Exception.Description)
	}
	if out != nil && len(res.Result.Value) > 0 {
		return json.Unmarshal(res.Result.Value, out)
	}
	return nil
}

// WaitTrue evaluates cond until it is true, for at most limit, and fails
// the test if it never is.
func (b *Browser) WaitTrue(limit time.Duration, what, cond string) {
	b.t.Helper()
	if err := b.Poll(limit, cond); err != nil {
		b.t.Fatalf("browser: waiting for %s: %v\nconsole: %s", what, err, strings.Join(b.Console(), "\n"))
	}
}

// Poll evaluates cond until it is true, for at most limit.
func (b *Browser) Poll(limit time.Duration, cond string) error {
	var last error
	// The DevTools protocol has no event for a JavaScript condition: poll.
	err := testutil.Wait(b.t.Context(), limit, func() bool {
		var ok bool
		last = b.eval("!!("+cond+")", &ok)
		return last == nil && ok
	})
	if err != nil && last != nil {
		return fmt.Errorf("%w (last evaluation: %v)", err, last)
	}
	return err
}

// Console returns what the page logged and threw.
func (b *Browser) Console() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.console...)
}

// Output returns Chromium's own output so far.
func (b *Browser) Output() string { return b.proc.Output() }
