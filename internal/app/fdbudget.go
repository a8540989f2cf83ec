package app

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"syscall"

	"github.com/felixge/httpsnoop"

	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/connlimit"
)

// fdBaseReserve is how many file descriptors userd keeps out of the
// listeners' budget besides the database pool: standard streams, the
// listening sockets, the netpoller, the JWKS and Clerk Backend API
// clients' connections (a handful each), DNS lookups, the embedded
// PostgreSQL's log file, pprof and slack. Each listener also needs one
// more for an instant when it is full (connlimit accepts a connection
// before it decides to close it or another one).
const fdBaseReserve = 64

// minListenerBudget is the least file descriptor budget the listeners can
// work with; a lower limit refuses to start.
const minListenerBudget = 64

// fdLimit returns the process's file descriptor limit (soft, hard),
// raising the soft limit to the hard one first if it is lower. Go itself
// does that when package os initialises (since Go 1.19, restoring the
// original limit for child processes such as the embedded PostgreSQL), so
// the raise here only runs if something prevented it.
func fdLimit() (soft, hard uint64, err error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, fmt.Errorf("read the file descriptor limit (RLIMIT_NOFILE): %w", err)
	}
	if rl.Cur < rl.Max {
		raised := syscall.Rlimit{Cur: rl.Max, Max: rl.Max}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			rl.Cur = rl.Max
		}
	}
	return rl.Cur, rl.Max, nil
}

// connBudget is what each listener may keep open: its configured limit,
// lowered to fit the file descriptor limit.
type connBudget struct {
	FDLimit uint64
	Reserve int
	// GRPC, HTTP, Webhook and Ops are the listeners' connection limits (0
	// for a listener that is off).
	GRPC, HTTP, Webhook, Ops int
	// Lowered says the configured limits did not fit and were lowered.
	Lowered bool
}

// listenersOn says which listeners are bound.
type listenersOn struct{ grpc, http, webhook, ops bool }

// planConnBudget shares the file descriptor limit among the listeners.
// First come the reserve (fdBaseReserve, the database pool and one
// descriptor per listener for the instant connlimit holds a connection it
// will close); then the operations listener's limit, so that /readyz and
// /metrics keep their own connections whatever the others hold (at most an
// eighth of what is left, when the limit is tight); then the API
// listeners' limits, each lowered in proportion when together they exceed
// the rest.
func planConnBudget(fdLimit uint64, dbConns int, want config.Limits, on listenersOn) (connBudget, error) {
	b := connBudget{FDLimit: fdLimit, Reserve: fdBaseReserve + dbConns + 4}
	avail := int64(fdLimit) - int64(b.Reserve)
	if fdLimit > 1<<40 { // "unlimited": no budget to share
		avail = 1 << 40
	}
	if avail < minListenerBudget {
		return b, fmt.Errorf("the file descriptor limit (ulimit -n) is %d: userd needs at least %d (%d for itself and the database pool, %d for connections); raise it",
			fdLimit, b.Reserve+minListenerBudget, b.Reserve, minListenerBudget)
	}
	if on.ops {
		b.Ops = int(min(int64(want.OpsMaxConns), max(avail/8, 1)))
		b.Lowered = b.Ops < want.OpsMaxConns
		avail -= int64(b.Ops)
	}
	type share struct {
		want int
		got  *int
	}
	var shares []share
	for _, s := range []struct {
		on   bool
		want int
		got  *int
	}{
		{on.grpc, want.GRPCMaxConns, &b.GRPC},
		{on.http, want.HTTPMaxConns, &b.HTTP},
		{on.webhook, want.WebhookMaxConns, &b.Webhook},
	} {
		if s.on {
			shares = append(shares, share{s.want, s.got})
		}
	}
	var total int64
	for _, s := range shares {
		total += int64(s.want)
	}
	for _, s := range shares {
		*s.got = s.want
		if total > avail {
			*s.got = int(max(int64(s.want)*avail/total, 1))
			b.Lowered = true
		}
	}
	return b, nil
}

// logBudget reports the file descriptor limit and the listeners' limits at
// start, and warns when configured limits were lowered to fit.
func logBudget(log *slog.Logger, b connBudget, hard uint64, want config.Limits) {
	attrs := []any{
		"fd_limit", b.FDLimit, "fd_limit_hard", hard, "fd_reserved", b.Reserve,
		"grpc_max_conns", b.GRPC, "http_max_conns", b.HTTP, "webhook_max_conns", b.Webhook, "ops_max_conns", b.Ops,
	}
	if !b.Lowered {
		log.Info("connection limits", attrs...)
		return
	}
	log.Warn("connection limits lowered to fit the file descriptor limit (raise ulimit -n, or lower USERD_*_MAX_CONNS)",
		append(attrs, "configured", fmt.Sprintf("grpc %d, http %d, webhook %d, ops %d",
			want.GRPCMaxConns, want.HTTPMaxConns, want.WebhookMaxConns, want.OpsMaxConns))...)
}

// limitListeners wraps each bound listener in its connection limit.
func (a *App) limitListeners() {
	a.metrics.FDLimit(a.budget.FDLimit)
	for _, l := range []struct {
		name string
		ln   *net.Listener
		max  int
		http bool
	}{
		{"grpc", &a.grpcLn, a.budget.GRPC, false},
		{"api", &a.apiLn, a.budget.HTTP, true},
		{"webhook", &a.webhookLn, a.budget.Webhook, true},
		{"ops", &a.opsLn, a.budget.Ops, true},
	} {
		if *l.ln == nil {
			continue
		}
		opts := connlimit.Options{Name: l.name, Max: l.max, Observer: a.metrics}
		if l.http {
			opts.Refusal = connlimit.HTTPRefusal
		}
		lim := connlimit.New(*l.ln, opts)
		*l.ln = lim
		if l.name == "grpc" {
			a.grpcLim = lim
		}
		a.metrics.ListenerMax(l.name, l.max)
	}
}

// provenBy2xx marks a webhook connection proven once a delivery on it is
// answered 2xx, which only a correctly signed one is.
func provenBy2xx(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := httpsnoop.CaptureMetrics(h, w, r)
		if d.Code >= 200 && d.Code < 300 {
			connlimit.MarkProven(r.Context())
		}
	})
}
