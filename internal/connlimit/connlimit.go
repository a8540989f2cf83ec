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
	"strings"
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
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// SelfEvictAge is how long a connection is safe from being closed for a
// new connection from its own address.
const SelfEvictAge = time.Second

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
	// unproven counts the connections that have not authenticated a call,
	// by remote host.
	unproven map[string]int
}

// New wraps ln.
func New(ln net.Listener, opts Options) *Listener {
	if opts.Max < 1 {
		opts.Max = 1
	}
	if opts.Observer == nil {
		opts.Observer = noObserver{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Listener{Listener: ln, opts: opts, open: list.New(), byAddr: map[string]*Conn{}, unproven: map[string]int{}}
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
	addr := ""
	if ra := c.RemoteAddr(); ra != nil {
		addr = ra.String()
	}
	l.mu.Lock()
	tc := &Conn{Conn: c, l: l, addr: addr, since: l.opts.Now()}
	tc.host = tc.addr
	if host, _, err := net.SplitHostPort(tc.addr); err == nil {
		tc.host = host
	}
	var victim *Conn
	if l.open.Len() >= l.opts.Max {
		victim = l.victimLocked()
		// An address may replace its own connections only once they
		// had their time to authenticate: a flood from one address
		// turns over at most Max connections per SelfEvictAge instead
		// of as fast as it can connect, and its excess is refused at
		// the cost of an accept and a close.
		if victim == nil || victim.host == tc.host && tc.since.Sub(victim.since) < SelfEvictAge {
			l.mu.Unlock()
			return nil, false
		}
		l.removeLocked(victim)
	}
	tc.elem = l.open.PushBack(tc)
	l.byAddr[tc.addr] = tc
	l.unproven[tc.host]++
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

// victimLocked picks the connection to close for a new one. Connections
// that never authenticated a call go first, those of the remote address
// that has the most of them first — a flood from one address (or a few)
// displaces its own connections, never those of other clients — and among
// these the oldest with no request or call under way (a socket that sent
// nothing, an HTTP/2 connection with only health calls), else the oldest.
// When every connection has authenticated, the oldest idle keep-alive one
// goes.
func (l *Listener) victimLocked() *Conn {
	top, most := "", 0
	for host, n := range l.unproven {
		if n > most || n == most && host < top {
			top, most = host, n
		}
	}
	var started, idle *Conn
	for e := l.open.Front(); e != nil; e = e.Next() {
		c := e.Value.(*Conn)
		switch {
		case !c.proven.Load() && c.host == top:
			if !c.started.Load() {
				return c
			}
			if started == nil {
				started = c
			}
		case c.proven.Load() && c.idle.Load() && idle == nil:
			idle = c
		}
	}
	if started != nil {
		return started
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
	if !c.proven.Load() {
		l.dropUnprovenLocked(c.host)
	}
	return true
}

func (l *Listener) dropUnprovenLocked(host string) {
	if l.unproven[host]--; l.unproven[host] <= 0 {
		delete(l.unproven, host)
	}
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
	l     *Listener
	addr  string
	host  string
	since time.Time
	elem  *list.Element // guarded by l.mu; nil once removed

	proven  atomic.Bool
	started atomic.Bool
	idle    atomic.Bool
	once    sync.Once
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
func (c *Conn) MarkProven() {
	if c.proven.Load() {
		return
	}
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if c.proven.Load() {
		return
	}
	c.proven.Store(true)
	if c.elem != nil {
		c.l.dropUnprovenLocked(c.host)
	}
}

// MarkStarted records whether a request or call that needs
// authentication is under way on the connection.
func (c *Conn) MarkStarted(started bool) { c.started.Store(started) }

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
	if c := FromContext(ctx); c != nil {
		c.MarkProven()
	}
}

// HTTPConnState is an http.Server ConnState that tells the listener which
// connections wait between requests.
func HTTPConnState(c net.Conn, s http.ConnState) {
	if tc, ok := c.(*Conn); ok {
		tc.MarkIdle(s == http.StateIdle)
		tc.MarkStarted(s == http.StateActive)
	}
}

// StatsHandler is a gRPC stats.Handler that puts each connection of l in
// the context of its calls, where MarkProven finds it, and marks a
// connection started when a call to a method under StartedPrefix (the
// methods that authenticate) arrives on it.
type StatsHandler struct {
	L             *Listener
	StartedPrefix string
}

// TagConn implements stats.Handler.
func (h StatsHandler) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	return WithConn(ctx, h.L.Lookup(info.RemoteAddr))
}

// HandleConn implements stats.Handler.
func (StatsHandler) HandleConn(context.Context, stats.ConnStats) {}

// TagRPC implements stats.Handler.
func (h StatsHandler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if c := FromContext(ctx); c != nil && strings.HasPrefix(info.FullMethodName, h.StartedPrefix) {
		c.MarkStarted(true)
	}
	return ctx
}

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
