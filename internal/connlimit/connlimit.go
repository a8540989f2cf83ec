// Package connlimit bounds the connections one listener holds open, so that
// no client — authenticated or not — can make userd run out of file
// descriptors, and so that a full listener still lets new callers in.
//
// golang.org/x/net/netutil.LimitListener bounds connections by blocking
// Accept: excess connections wait in the kernel's accept queue, costing
// userd no descriptor. Under an attack that holds every slot, that queue
// fills with the attacker's connections too, and a legitimate caller waits
// behind all of them (FIFO, up to net.core.somaxconn entries) for slots
// that the attacker takes back as soon as they free: its TCP handshake
// succeeds in the kernel, and then nothing answers. This package accepts
// instead, and when the listener is full it makes room by closing the
// oldest connection that has not proven itself — one on which no call has
// authenticated (MarkProven) — or else the oldest idle keep-alive
// connection (HTTP, MarkIdle); only when every open connection is an
// authenticated one at work is the new connection refused (closed at once,
// after a 503 on HTTP listeners). Each new connection thus gets about
// limit/(rate of new connections) of time to authenticate, which a
// legitimate client needs milliseconds for, and a flood of unauthenticated
// connections only ever displaces its own. It costs one descriptor for an
// instant per excess connection: the caller reserves headroom for it (see
// internal/app/fdbudget.go).
package connlimit

import (
	"container/list"
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/stats"
)

// Observer learns what a Listener does, for metrics.
type Observer interface {
	// ConnOpened and ConnClosed report a connection admitted and closed.
	ConnOpened(listener string)
	ConnClosed(listener string)
	// ConnEvicted reports an open connection closed to make room.
	ConnEvicted(listener string, proven bool)
	// ConnRejected reports a new connection refused: the listener was
	// full of authenticated connections at work.
	ConnRejected(listener string)
}

type noObserver struct{}

func (noObserver) ConnOpened(string)        {}
func (noObserver) ConnClosed(string)        {}
func (noObserver) ConnEvicted(string, bool) {}
func (noObserver) ConnRejected(string)      {}

// Options configure a Listener.
type Options struct {
	// Name labels the listener in metrics (grpc, api, webhook, ops).
	Name string
	// Max is the most connections open at once (at least 1).
	Max int
	// Refusal, when set, is written to a refused connection before it is
	// closed (an HTTP 503 on HTTP listeners).
	Refusal []byte
	// Observer, when set, is told of every admission, eviction and
	// refusal.
	Observer Observer
}

// HTTPRefusal is the answer of a full HTTP listener: 503 with a retry
// hint, and the connection closed.
var HTTPRefusal = []byte("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n" +
	"Connection: close\r\nContent-Length: 40\r\n\r\ntoo many connections: retry in a second\n")

// Listener is a net.Listener with a bound on open connections.
type Listener struct {
	net.Listener
	opts Options

	mu sync.Mutex
	// open holds the open connections, oldest first.
	open   *list.List
	byAddr map[string]*Conn
}

// New wraps ln.
func New(ln net.Listener, opts Options) *Listener {
	if opts.Max < 1 {
		opts.Max = 1
	}
	if opts.Observer == nil {
		opts.Observer = noObserver{}
	}
	return &Listener{Listener: ln, opts: opts, open: list.New(), byAddr: map[string]*Conn{}}
}

// Max is the bound.
func (l *Listener) Max() int { return l.opts.Max }

// Open is the number of connections open now.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open.Len()
}

// Accept waits for a connection and admits it, making room when the
// listener is full; a connection that cannot be admitted is closed and
// Accept waits for the next.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc, ok := l.admit(c); ok {
			return tc, nil
		}
		l.opts.Observer.ConnRejected(l.opts.Name)
		if len(l.opts.Refusal) > 0 {
			// A fresh socket's send buffer is empty: this write does not
			// wait for the peer; the deadline is for safety.
			_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			_, _ = c.Write(l.opts.Refusal)
		}
		_ = c.Close()
	}
}

// admit registers c, evicting a connection first if the listener is full.
func (l *Listener) admit(c net.Conn) (*Conn, bool) {
	l.mu.Lock()
	var victim *Conn
	if l.open.Len() >= l.opts.Max {
		victim = l.victimLocked()
		if victim == nil {
			l.mu.Unlock()
			return nil, false
		}
		l.removeLocked(victim)
	}
	tc := &Conn{Conn: c, l: l, addr: c.RemoteAddr().String()}
	tc.elem = l.open.PushBack(tc)
	l.byAddr[tc.addr] = tc
	l.mu.Unlock()
	if victim != nil {
		l.opts.Observer.ConnEvicted(l.opts.Name, victim.proven.Load())
		// Closed outside the lock; its own Close finds it removed.
		_ = victim.Conn.Close()
		l.opts.Observer.ConnClosed(l.opts.Name)
	}
	l.opts.Observer.ConnOpened(l.opts.Name)
	return tc, true
}

// victimLocked picks the connection to close for a new one: the oldest
// that never authenticated a call, else the oldest idle one.
func (l *Listener) victimLocked() *Conn {
	var idle *Conn
	for e := l.open.Front(); e != nil; e = e.Next() {
		c := e.Value.(*Conn)
		if !c.proven.Load() {
			return c
		}
		if idle == nil && c.idle.Load() {
			idle = c
		}
	}
	return idle
}

func (l *Listener) removeLocked(c *Conn) bool {
	if c.elem == nil {
		return false
	}
	l.open.Remove(c.elem)
	c.elem = nil
	if l.byAddr[c.addr] == c {
		delete(l.byAddr, c.addr)
	}
	return true
}

// Lookup finds the open connection from a remote address (for gRPC, whose
// calls know their peer's address, not their connection).
func (l *Listener) Lookup(remote net.Addr) *Conn {
	if remote == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byAddr[remote.String()]
}

// Conn is an admitted connection.
type Conn struct {
	net.Conn
	l    *Listener
	addr string
	elem *list.Element // guarded by l.mu; nil once removed

	proven atomic.Bool
	idle   atomic.Bool
	once   sync.Once
}

// Close closes the connection and frees its place.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		removed := c.l.removeLocked(c)
		c.l.mu.Unlock()
		if removed {
			c.l.opts.Observer.ConnClosed(c.l.opts.Name)
		}
	})
	return err
}

// Proven reports whether a call on the connection has authenticated.
func (c *Conn) Proven() bool { return c.proven.Load() }

// MarkProven records that a call on the connection authenticated: it is
// no longer closed to make room for others, unless idle.
func (c *Conn) MarkProven() { c.proven.Store(true) }

// MarkIdle records whether the connection waits between requests (HTTP
// keep-alive), when closing it costs its client nothing but a reconnect.
func (c *Conn) MarkIdle(idle bool) { c.idle.Store(idle) }

type connKey struct{}

// WithConn returns ctx carrying c (http.Server.ConnContext, or a gRPC
// stats handler's TagConn).
func WithConn(ctx context.Context, c *Conn) context.Context {
	if c == nil {
		return ctx
	}
	return context.WithValue(ctx, connKey{}, c)
}

// FromContext returns the connection of a call, or nil.
func FromContext(ctx context.Context) *Conn {
	c, _ := ctx.Value(connKey{}).(*Conn)
	return c
}

// MarkProven marks the connection of ctx's call as proven, if it has one.
func MarkProven(ctx context.Context) {
	if c := FromContext(ctx); c != nil && !c.proven.Load() {
		c.proven.Store(true)
	}
}

// HTTPConnState is an http.Server ConnState that tells the listener which
// connections wait between requests.
func HTTPConnState(c net.Conn, s http.ConnState) {
	if tc, ok := c.(*Conn); ok {
		tc.MarkIdle(s == http.StateIdle)
	}
}

// StatsHandler is a gRPC stats.Handler that puts each connection of l in
// the context of its calls, where MarkProven finds it.
type StatsHandler struct{ L *Listener }

// TagConn implements stats.Handler.
func (h StatsHandler) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	return WithConn(ctx, h.L.Lookup(info.RemoteAddr))
}

// HandleConn implements stats.Handler.
func (StatsHandler) HandleConn(context.Context, stats.ConnStats) {}

// TagRPC implements stats.Handler.
func (StatsHandler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

// HandleRPC implements stats.Handler.
func (StatsHandler) HandleRPC(context.Context, stats.RPCStats) {}

// ConnContext is an http.Server ConnContext that puts the connection in
// every request's context.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*Conn); ok {
		return WithConn(ctx, tc)
	}
	return ctx
}
