package connlimit

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

type counts struct {
	mu                             sync.Mutex
	opened, closed, rejected       int
	evictedProven, evictedUnproven int
}

func (c *counts) ConnOpened(string) { c.mu.Lock(); c.opened++; c.mu.Unlock() }
func (c *counts) ConnClosed(string) { c.mu.Lock(); c.closed++; c.mu.Unlock() }
func (c *counts) ConnRejected(string) {
	c.mu.Lock()
	c.rejected++
	c.mu.Unlock()
}

func (c *counts) ConnEvicted(_ string, proven bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if proven {
		c.evictedProven++
	} else {
		c.evictedUnproven++
	}
}

// harness is a limited listener and the clients connected to it.
type harness struct {
	t        *testing.T
	l        *Listener
	accepted chan net.Conn
	obs      *counts

	mu  sync.Mutex
	now time.Time
}

func (h *harness) advance(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.now = h.now.Add(d)
}

func newHarness(t *testing.T, max int) *harness {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, accepted: make(chan net.Conn, 100), now: time.Unix(1_000_000, 0), obs: &counts{}}
	h.l = New(raw, Options{Name: "test", Max: max, Observer: h.obs, Refusal: []byte("full\n"), Now: func() time.Time {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.now
	}})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := h.l.Accept()
			if err != nil {
				return
			}
			h.accepted <- c
		}
	}()
	t.Cleanup(func() {
		h.l.Close()
		<-done
	})
	return h
}

// client connects from the loopback address 127.0.0.<from>; it returns
// the client's end and, if admitted, the server's (nil if refused).
func (h *harness) client(from byte) (net.Conn, *Conn) {
	h.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, from)}}
	c, err := d.Dial("tcp", h.l.Addr().String())
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	select {
	case s := <-h.accepted:
		return c, s.(*Conn)
	case <-time.After(2 * time.Second):
		// Refused ones are closed by Accept, which goes on waiting;
		// closed tells them apart.
	}
	return c, nil
}

// closed reports whether the server closed the client's connection.
func closed(t *testing.T, c net.Conn) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// TestEviction walks a full listener through each rule: a new client
// displaces the flooding address's oldest unauthenticated connection, the
// flooding address cannot displace its own young connections, a connection
// with a call under way goes after one without, authenticated connections
// are kept unless idle, and every closed place is counted once.
func TestEviction(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 3)
	a1, s1 := h.client(1)
	a2, s2 := h.client(1)
	a3, s3 := h.client(1)
	if s1 == nil || s2 == nil || s3 == nil || h.l.Open() != 3 {
		t.Fatalf("the first 3 connections were not admitted (%d open)", h.l.Open())
	}
	s1.MarkStarted(true) // s1 has a call under way: s2 goes first

	// Another address displaces the flood's oldest idle connection.
	b1, sb1 := h.client(2)
	if sb1 == nil || !closed(t, a2) || closed(t, a1) {
		t.Fatal("a connection from another address did not displace the flood's oldest connection without a call")
	}
	// The flood's own new connection, within a second: refused.
	a4, s4 := h.client(1)
	if s4 != nil || !closed(t, a4) {
		t.Fatal("127.0.0.1 displaced its own connection younger than 1 s")
	}
	// A second later it may: its oldest without a call (s3) goes, not
	// s1.
	h.advance(SelfEvictAge)
	_, s5 := h.client(1)
	if s5 == nil || !closed(t, a3) || closed(t, a1) {
		t.Fatal("127.0.0.1 could not replace its own connection without a call after 1 s")
	}

	// Everyone authenticated and at work: a newcomer is refused, with the
	// refusal written first.
	for _, c := range []*Conn{s1, sb1, s5} {
		c.MarkProven()
	}
	c6, s6 := h.client(3)
	if s6 != nil {
		t.Fatal("a connection was admitted into a listener full of authenticated ones")
	}
	_ = c6.SetReadDeadline(time.Now().Add(2 * time.Second))
	if got, _ := io.ReadAll(c6); string(got) != "full\n" {
		t.Errorf("refused connection read %q, want the refusal", got)
	}
	// One goes idle between requests: it makes room.
	sb1.MarkIdle(true)
	_, s7 := h.client(3)
	if s7 == nil || !closed(t, b1) {
		t.Fatal("an idle authenticated connection did not make room")
	}
	// Closing frees a place, once.
	s7.Close()
	s7.Close()
	if h.l.Open() != 2 {
		t.Errorf("%d open after a close, want 2", h.l.Open())
	}
	h.obs.mu.Lock()
	defer h.obs.mu.Unlock()
	if h.obs.evictedUnproven != 2 || h.obs.evictedProven != 1 || h.obs.rejected != 2 || h.obs.opened != 6 || h.obs.opened-h.obs.closed != 2 {
		t.Errorf("observed %d unproven and %d proven evicted, %d rejected, %d opened, %d closed; want 2, 1, 2, 6, 4",
			h.obs.evictedUnproven, h.obs.evictedProven, h.obs.rejected, h.obs.opened, h.obs.closed)
	}
}

// TestLookup: a gRPC call finds its connection by its peer address, and
// not once the connection is closed.
func TestLookup(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2)
	c, s := h.client(1)
	if got := h.l.Lookup(c.LocalAddr()); got != s {
		t.Fatalf("Lookup(%v) = %v, want the admitted connection", c.LocalAddr(), got)
	}
	s.Close()
	if got := h.l.Lookup(c.LocalAddr()); got != nil {
		t.Errorf("Lookup after close = %v, want nil", got)
	}
}
