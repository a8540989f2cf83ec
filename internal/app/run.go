package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/database"
	"github.com/userd/userd/internal/stripehook"
)

// stopBound bounds each wait of the shutdown past the grace period: for
// the calls the grace period cut (their contexts are cancelled, so they
// end at once unless something ignores its context), then for the
// background tasks. What is still running past it is logged by name and
// the shutdown goes on.
const stopBound = 10 * time.Second

// Run serves until ctx is done (or a server fails), then shuts down:
//
//  1. health turns NOT_SERVING, open watches end (UNAVAILABLE), the
//     listeners stop accepting;
//  2. in-flight calls and deliveries finish within USERD_SHUTDOWN_GRACE;
//  3. those still running are cut: their contexts are cancelled and their
//     connections closed, and they are waited for (stopBound), so that none
//     of them meets a closed pool;
//  4. the background tasks are stopped, last started first, and waited for
//     (stopBound);
//  5. the pool closes, then the embedded PostgreSQL, if any, stops.
//
// It returns the first server's error, or nil after a stop by ctx.
func (a *App) Run(ctx context.Context) error {
	// The background tasks outlive ctx: its end starts the shutdown, which
	// stops them only once the servers no longer need them.
	if err := a.background.Start(context.WithoutCancel(ctx)); err != nil {
		a.closeListeners()
		a.closeMigrator()
		a.db.Close()
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	a.serve(g)
	// Every listener was bound (New) and the schema migrated (init)
	// before this point: calls are accepted from now on.
	a.log.Info("userd ready", "grpc", addrOrOff(a.grpcLn), "rest", addrOrOff(a.apiLn),
		"webhook", addrOrOff(a.webhookLn), "ops", addrOrOff(a.opsLn), "console", addrOrOff(a.consoleLn), "database", a.databaseName())
	<-gctx.Done() // ctx ended, or a server failed
	a.shutdown()
	return g.Wait()
}

// serve runs every server on g; each returns nil once shut down.
func (a *App) serve(g *errgroup.Group) {
	if a.grpcLn != nil {
		g.Go(func() error {
			a.log.Info("serving gRPC", "addr", a.grpcLn.Addr().String())
			// A shutdown that comes before Serve began (a short-lived
			// instance, a signal during start-up) makes Serve return
			// ErrServerStopped at once: a stop, not a failure.
			if err := a.grpc.Serve(a.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				return fmt.Errorf("grpc server: %w", err)
			}
			return nil
		})
	}
	for _, h := range []struct {
		name string
		srv  *http.Server
		ln   net.Listener
		path string
	}{
		{"HTTP API", a.api, a.apiLn, ""},
		{"operations", a.ops, a.opsLn, ""},
		{"webhooks", a.webhook, a.webhookLn, clerkhook.Path + " " + stripehook.Path},
		{"operator console", a.console, a.consoleLn, ""},
	} {
		if h.srv == nil {
			continue
		}
		a.httpHandlers.track(h.srv)
		g.Go(func() error {
			attrs := []any{"addr", h.ln.Addr().String()}
			if h.path != "" {
				attrs = append(attrs, "path", h.path)
			}
			a.log.Info("serving "+h.name, attrs...)
			if err := h.srv.Serve(h.ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("%s server: %w", h.name, err)
			}
			return nil
		})
	}
}

func (a *App) shutdown() {
	a.log.Info("shutting down", "grace", a.cfg.ShutdownGrace.String())
	a.health.Shutdown()
	// Watch streams never end on their own: end them (UNAVAILABLE, resume
	// from the last cursor) so that the graceful stop need not wait.
	a.feed.Close()
	a.stopServers()
	if a.stripeHook != nil {
		a.stripeHook.Close()
	}
	if a.hook != nil {
		a.hook.Close()
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), stopBound)
	defer cancel()
	if err := a.background.Stop(stopCtx); err != nil {
		a.log.Error("closing the database pool with background tasks still running", "err", err)
	}
	a.closeMigrator()
	if a.beforePoolClose != nil {
		a.beforePoolClose()
	}
	a.db.Close()
	a.log.Info("stopped")
}

// stopServers stops accepting, lets in-flight calls finish within the grace
// period, then cuts the rest and waits until no handler runs: past this
// point nothing a request started uses the pool (the Clerk event batches
// they queued are background work, stopped with the group).
func (a *App) stopServers() {
	graceCtx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownGrace)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { a.stopGRPC(graceCtx) })
	for _, srv := range []*http.Server{a.api, a.webhook, a.ops, a.console} {
		if srv == nil {
			continue
		}
		wg.Go(func() {
			if err := srv.Shutdown(graceCtx); err != nil {
				a.log.Warn("grace period over; cutting remaining HTTP requests", "err", err)
				_ = srv.Close()
				a.httpHandlers.cut()
			}
		})
	}
	wg.Wait()
	// http.Server.Close does not wait for the handlers it cuts.
	a.httpHandlers.cut()
	waitCtx, cancelWait := context.WithTimeout(context.Background(), stopBound)
	defer cancelWait()
	if n, err := a.httpHandlers.wait(waitCtx); err != nil {
		a.log.Error("HTTP handlers still running after they were cut", "count", n)
	}
}

// stopGRPC stops the gRPC server gracefully within the grace period, then
// cuts what is left and waits for its handlers.
func (a *App) stopGRPC(graceCtx context.Context) {
	// GracefulStop returns once every handler has returned, even when Stop
	// cuts it short (google.golang.org/grpc Server.stop waits for its
	// handlers whenever the stop is graceful).
	stopped := make(chan struct{})
	go func() {
		a.grpc.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
		return
	case <-graceCtx.Done():
	}
	a.log.Warn("grace period over; cutting remaining gRPC calls")
	a.grpc.Stop() // closes the connections, which cancels the calls' contexts
	t := time.NewTimer(stopBound)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		a.log.Error("gRPC handlers still running after they were cut")
	}
}

// inflight counts the HTTP handlers running and gives them a context that
// the shutdown cancels when it cuts them: http.Server.Close neither waits
// for them nor, for a handler that has not read its whole body, cancels
// its context.
type inflight struct {
	once   sync.Once
	ctx    context.Context
	cancel context.CancelFunc

	mu   sync.Mutex
	n    int
	cuts bool
	idle chan struct{} // closed when n drops to zero while wait waits
}

func (f *inflight) init() {
	f.once.Do(func() { f.ctx, f.cancel = context.WithCancel(context.Background()) })
}

// track makes srv's handlers counted and cancellable; call it before Serve.
func (f *inflight) track(srv *http.Server) {
	f.init()
	srv.BaseContext = func(net.Listener) context.Context { return f.ctx }
	next := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !f.enter() {
			// Cut while the request was read: its connection is closing.
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		defer f.leave()
		next.ServeHTTP(w, r)
	})
}

func (f *inflight) enter() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cuts {
		return false
	}
	f.n++
	return true
}

func (f *inflight) leave() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n--
	if f.n == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
}

// cut cancels every handler's context and refuses handlers from now on.
func (f *inflight) cut() {
	f.init()
	f.mu.Lock()
	f.cuts = true
	f.mu.Unlock()
	f.cancel()
}

// wait returns once no handler runs, or with the number still running
// when ctx ends.
func (f *inflight) wait(ctx context.Context) (int, error) {
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return 0, nil
	}
	if f.idle == nil {
		f.idle = make(chan struct{})
	}
	idle := f.idle
	f.mu.Unlock()
	select {
	case <-idle:
		return 0, nil
	case <-ctx.Done():
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.n, ctx.Err()
	}
}

// addrOrOff is a listener's address for the log, or "off".
func addrOrOff(ln net.Listener) string {
	if ln == nil {
		return config.Off
	}
	return ln.Addr().String()
}

// databaseName says which database userd uses, without credentials.
func (a *App) databaseName() string {
	if a.db.Embedded() {
		return "embedded (" + database.DataDir(a.cfg.Database) + ")"
	}
	c := a.pool.Config().ConnConfig
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}
