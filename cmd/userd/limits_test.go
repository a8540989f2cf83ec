package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/procstat"
	"github.com/userd/userd/internal/testdb"
)

// TestHeaderLimits attacks every listener of a real userd process with
// headers: gRPC metadata amplified by HPACK, more concurrent streams than
// a connection may hold, oversized HTTP/1 headers and HTTP/2 prior
// knowledge on the HTTP listeners. userd's memory stays bounded and other
// callers keep being served.
func TestHeaderLimits(t *testing.T) {
	bin := buildUserd(t)
	ep := newEndpoints(t)
	p := startUserd(t, bin, testdb.URL(t), t.TempDir(), ep)
	c, ctx := client(t, ep.GRPC)
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_victim"}); err != nil {
		t.Fatal(err)
	}
	served := func(t *testing.T, what string) {
		t.Helper()
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := c.GetUser(callCtx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_victim"}}); err != nil {
			t.Errorf("gRPC client not served %s: %v", what, err)
		}
	}

	// The attack: one connection, 40 streams, each carrying 4,000
	// copies of one ~2.9 KB x-pad-bin entry — HPACK-indexed after its first
	// appearance, so ~1 byte per copy on the wire — and never a message, so
	// no authentication ever runs. Unbounded, userd decoded ~9 MB of
	// metadata per stream and held it while waiting for the message.
	t.Run("MetadataFlood", func(t *testing.T) {
		const streams, copies = 40, 4000
		before := procstat.RSSMiB(p.Pid())
		h := dialH2(t, ep.GRPC)
		raw := make([]byte, 2175) // base64: 2,900 bytes
		_, _ = rand.Read(raw)
		pad := base64.StdEncoding.EncodeToString(raw)
		sent := 0
		for range streams {
			fields := grpcRequestHeaders(ep.GRPC)
			for range copies {
				fields = append(fields, hpack.HeaderField{Name: "x-pad-bin", Value: pad})
			}
			sent += h.openStream(fields)
		}
		h.ping()
		peak := procstat.RSSMiB(p.Pid())
		served(t, "during the metadata flood")
		t.Logf("%d streams × %d copies of a %d-byte x-pad-bin entry = %d KiB sent, %.0f MiB of header lists; userd RSS %.0f MiB before, %.0f MiB after",
			streams, copies, len(pad), sent>>10, float64(streams*copies*(len(pad)+len("x-pad-bin")+32))/(1<<20), before, peak)
		if peak >= 100 {
			t.Errorf("userd RSS %.0f MiB under the metadata flood, want < 100 MiB", peak)
		}
		if reset := h.resets(); reset < streams {
			t.Errorf("the server reset %d of the %d oversized streams (%v), want all", reset, streams, h.resetCodes())
		}
	})

	// Streams that never send a message, beyond the connection's bound,
	// are refused at once instead of held.
	t.Run("ConcurrentStreams", func(t *testing.T) {
		const limit, extra = 100, 50
		h := dialH2(t, ep.GRPC)
		if got := h.setting(http2.SettingMaxConcurrentStreams); got != limit {
			t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d, want %d", got, limit)
		}
		for range limit + extra {
			h.openStream(grpcRequestHeaders(ep.GRPC))
		}
		h.ping()
		if refused := h.resetCodes()[http2.ErrCodeRefusedStream]; refused != extra {
			t.Errorf("%d of %d streams refused, want the %d beyond %d", refused, limit+extra, extra, limit)
		}
		served(t, fmt.Sprintf("while another connection holds %d idle streams", limit))
	})

	// What a legitimate caller sends at most still passes; more is refused
	// before it is sent.
	t.Run("LegitimateMetadata", func(t *testing.T) {
		h := dialH2(t, ep.GRPC)
		if got := h.setting(http2.SettingMaxHeaderListSize); got != 16<<10 {
			t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d, want %d", got, 16<<10)
		}
		call := func(padBytes int) error {
			callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			// As large as a Clerk session token can be (a browser keeps it
			// in a 4 KB cookie), with tracing headers.
			callCtx = metadata.AppendToOutgoingContext(callCtx,
				"x-client-token", strings.Repeat("t", padBytes),
				"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
				"tracestate", strings.Repeat("v", 512),
				"x-request-id", "req-0123456789abcdef")
			_, err := c.GetUser(callCtx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_victim"}})
			return err
		}
		if err := call(4096); err != nil {
			t.Errorf("call with 4 KiB of metadata beside the token: %v", err)
		}
		if err := call(20 << 10); err == nil {
			t.Error("call with 20 KiB of metadata served, want it refused")
		} else {
			t.Logf("20 KiB of metadata: %v", status.Convert(err).Message())
		}
	})

	t.Run("HTTPHeaderBytes", func(t *testing.T) {
		for _, l := range []struct {
			name, addr, method, path string
			limit                    int
		}{
			{"api", ep.HTTP, "GET", "/v1/users/user_victim", 32 << 10},
			{"webhook", ep.Webhook, "POST", "/webhooks/clerk", 8 << 10},
			{"stripe webhook", ep.Webhook, "POST", "/webhooks/stripe", 8 << 10},
			{"ops", ep.Ops, "GET", "/healthz", 8 << 10},
		} {
			// net/http reads up to MaxHeaderBytes plus 4 KiB of slack.
			under := rawHTTP1(t, l.addr, l.method, l.path, l.limit-2048)
			over := rawHTTP1(t, l.addr, l.method, l.path, l.limit+8192)
			if under == 0 || under == http.StatusRequestHeaderFieldsTooLarge || over != http.StatusRequestHeaderFieldsTooLarge {
				t.Errorf("%s (limit %d KiB): %d with %d KiB of headers, %d with %d KiB; want 431 only for the larger",
					l.name, l.limit>>10, under, (l.limit-2048)>>10, over, (l.limit+8192)>>10)
			}
		}
		served(t, "after oversized HTTP headers")
	})

	// The HTTP listeners are plaintext HTTP/1.1 only: HTTP/2 with prior
	// knowledge (h2c) would bring HPACK's amplification to them too.
	t.Run("NoH2C", func(t *testing.T) {
		for _, addr := range []string{ep.HTTP, ep.Webhook, ep.Ops} {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = conn.Write([]byte(http2.ClientPreface))
			_ = http2.NewFramer(conn, nil).WriteSettings()
			reply, _ := io.ReadAll(conn)
			conn.Close()
			if !bytes.HasPrefix(reply, []byte("HTTP/1.1 ")) {
				t.Errorf("%s answered the HTTP/2 preface with %q, want an HTTP/1.1 response", addr, reply[:min(len(reply), 32)])
			}
		}
	})
}

// grpcRequestHeaders are the headers of a gRPC call to GetUser, as a
// client sends them.
func grpcRequestHeaders(authority string) []hpack.HeaderField {
	return []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/userd.v1.UserService/GetUser"}, {Name: ":authority", Value: authority},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}
}

// h2 is a raw HTTP/2 client connection: it sends what a test tells it to,
// answers the server's SETTINGS and PINGs, and records what comes back.
type h2 struct {
	t      *testing.T
	conn   net.Conn
	fr     *http2.Framer
	wmu    sync.Mutex
	hbuf   bytes.Buffer
	enc    *hpack.Encoder
	nextID uint32
	pongs  chan struct{}

	mu       sync.Mutex
	settings map[http2.SettingID]uint32
	rst      map[http2.ErrCode]int
	gotSet   chan struct{}
}

func dialH2(t *testing.T, addr string) *h2 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &h2{t: t, conn: conn, fr: http2.NewFramer(conn, conn), nextID: 1, pongs: make(chan struct{}, 1),
		settings: map[http2.SettingID]uint32{}, rst: map[http2.ErrCode]int{}, gotSet: make(chan struct{})}
	h.enc = hpack.NewEncoder(&h.hbuf)
	done := make(chan struct{})
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	h.write(func() error { return h.fr.WriteSettings() })
	go func() {
		defer close(done)
		h.read()
	}()
	select {
	case <-h.gotSet:
	case <-time.After(10 * time.Second):
		t.Fatal("no SETTINGS from the server")
	}
	return h
}

func (h *h2) write(f func() error) {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if err := f(); err != nil {
		h.t.Fatalf("write to the server: %v", err)
	}
}

func (h *h2) read() {
	sawSettings := false
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			h.mu.Lock()
			_ = f.ForeachSetting(func(s http2.Setting) error { h.settings[s.ID] = s.Val; return nil })
			h.mu.Unlock()
			if !sawSettings {
				sawSettings = true
				close(h.gotSet)
			}
			h.wmu.Lock()
			_ = h.fr.WriteSettingsAck()
			h.wmu.Unlock()
		case *http2.PingFrame:
			if f.IsAck() {
				h.pongs <- struct{}{}
				continue
			}
			h.wmu.Lock()
			_ = h.fr.WritePing(true, f.Data)
			h.wmu.Unlock()
		case *http2.RSTStreamFrame:
			h.mu.Lock()
			h.rst[f.ErrCode]++
			h.mu.Unlock()
		case *http2.GoAwayFrame:
			h.t.Logf("GOAWAY %v %q", f.ErrCode, f.DebugData())
		}
	}
}

// openStream sends one HEADERS block (with CONTINUATION frames if needed)
// that opens a stream and never ends it; it returns the bytes sent.
func (h *h2) openStream(fields []hpack.HeaderField) int {
	h.hbuf.Reset()
	for _, f := range fields {
		if err := h.enc.WriteField(f); err != nil {
			h.t.Fatal(err)
		}
	}
	block := h.hbuf.Bytes()
	id := h.nextID
	h.nextID += 2
	const frameMax = 16 << 10
	first := block[:min(len(block), frameMax)]
	h.write(func() error {
		if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(block) <= frameMax}); err != nil {
			return err
		}
		for rest := block[len(first):]; len(rest) > 0; {
			n := min(len(rest), frameMax)
			if err := h.fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
				return err
			}
			rest = rest[n:]
		}
		return nil
	})
	return len(block)
}

// ping waits until the server has processed every frame sent before it.
func (h *h2) ping() {
	h.write(func() error { return h.fr.WritePing(false, [8]byte{'u', 's', 'e', 'r', 'd'}) })
	select {
	case <-h.pongs:
	case <-time.After(60 * time.Second):
		h.t.Fatal("no PING acknowledgement within 60s")
	}
}

func (h *h2) setting(id http2.SettingID) uint32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.settings[id]
}

func (h *h2) resetCodes() map[http2.ErrCode]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[http2.ErrCode]int{}
	for k, v := range h.rst {
		out[k] = v
	}
	return out
}

func (h *h2) resets() int {
	n := 0
	for _, v := range h.resetCodes() {
		n += v
	}
	return n
}

// rawHTTP1 sends one HTTP/1.1 request whose headers take about size bytes
// and returns the status code (0 if the server hung up without one).
func rawHTTP1(t *testing.T, addr, method, path string, size int) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var req strings.Builder
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Length: 0\r\nConnection: close\r\n", method, path, addr, e2eToken)
	for i := 0; req.Len() < size; i++ {
		fmt.Fprintf(&req, "X-Pad-%d: %s\r\n", i, strings.Repeat("p", min(1000, max(1, size-req.Len()-20))))
	}
	req.WriteString("\r\n")
	if _, err := conn.Write([]byte(req.String())); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
