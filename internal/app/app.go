// Package app wires userd together: it opens the database, applies
// migrations, builds the domain service and the transports, binds the
// listeners and runs them until the context ends, then shuts down
// gracefully. cmd/userd calls it; end-to-end tests run it in-process.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/grpcapi"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/users"
)

// App is a configured, listening userd.
type App struct {
	cfg    config.Serve
	log    *slog.Logger
	pool   *pgxpool.Pool
	grpc   *grpc.Server
	health *health.Server
	grpcLn net.Listener
	// webhook is nil when USERD_WEBHOOK_ADDR is "off".
	webhook   *http.Server
	webhookLn net.Listener
}

// New connects to the database, migrates it when configured to, and binds
// the listeners. Call Run to serve.
func New(ctx context.Context, cfg config.Serve, log *slog.Logger) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pool, err := OpenPool(ctx, cfg.Database)
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, log: log, pool: pool}
	if err := a.init(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return a, nil
}

func (a *App) init(ctx context.Context) error {
	if a.cfg.AutoMigrate {
		if err := migrateUp(ctx, a.pool, a.log); err != nil {
			return err
		}
	}
	svc := users.NewService(store.New(a.pool), a.cfg.InitialCredits)

	a.grpc = grpc.NewServer(
		grpc.ChainUnaryInterceptor(grpcapi.Interceptors(a.log)...),
		grpc.MaxRecvMsgSize(1<<20),
	)
	userdv1.RegisterUserServiceServer(a.grpc, grpcapi.NewServer(svc))
	a.health = health.NewServer()
	healthpb.RegisterHealthServer(a.grpc, a.health)
	a.health.SetServingStatus(userdv1.UserService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	reflection.Register(a.grpc)

	ln, err := net.Listen("tcp", a.cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen on USERD_GRPC_ADDR %s: %w", a.cfg.GRPCAddr, err)
	}
	a.grpcLn = ln

	if a.cfg.WebhookAddr != config.Off {
		secrets, err := a.cfg.WebhookSecrets()
		if err != nil {
			return err
		}
		hook, err := clerkhook.New(clerkhook.Config{Secrets: secrets, Tolerance: a.cfg.WebhookTolerance}, svc, a.log)
		if err != nil {
			return err
		}
		if a.webhookLn, err = net.Listen("tcp", a.cfg.WebhookAddr); err != nil {
			return fmt.Errorf("listen on USERD_WEBHOOK_ADDR %s: %w", a.cfg.WebhookAddr, err)
		}
		a.webhook = newHTTPServer(hook.Routes(), a.log)
	}
	return nil
}

// newHTTPServer returns a server with timeouts that keep slow or idle
// clients from holding connections.
func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// WebhookAddr is the address the webhook listener is bound to, or nil when
// it is off.
func (a *App) WebhookAddr() net.Addr {
	if a.webhookLn == nil {
		return nil
	}
	return a.webhookLn.Addr()
}

// GRPCAddr is the address the gRPC listener is bound to.
func (a *App) GRPCAddr() net.Addr { return a.grpcLn.Addr() }

// Pool is the app's database pool (for tests and tools).
func (a *App) Pool() *pgxpool.Pool { return a.pool }

// Run serves until ctx is done, then stops accepting, lets in-flight calls
// finish within the configured grace period and closes the pool.
func (a *App) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() {
		a.log.Info("serving gRPC", "addr", a.grpcLn.Addr().String())
		if err := a.grpc.Serve(a.grpcLn); err != nil {
			errc <- fmt.Errorf("grpc server: %w", err)
		}
	}()
	if a.webhook != nil {
		go func() {
			a.log.Info("serving Clerk webhook", "addr", a.webhookLn.Addr().String(), "path", clerkhook.Path)
			if err := a.webhook.Serve(a.webhookLn); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("webhook server: %w", err)
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	a.shutdown()
	return err
}

func (a *App) shutdown() {
	a.log.Info("shutting down", "grace", a.cfg.ShutdownGrace.String())
	a.health.Shutdown()
	graceCtx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownGrace)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		stopped := make(chan struct{})
		go func() {
			a.grpc.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-graceCtx.Done():
			a.log.Warn("grace period over; cutting remaining gRPC calls")
			a.grpc.Stop()
		}
	})
	if a.webhook != nil {
		wg.Go(func() {
			if err := a.webhook.Shutdown(graceCtx); err != nil {
				a.log.Warn("grace period over; cutting remaining webhook deliveries", "err", err)
				_ = a.webhook.Close()
			}
		})
	}
	wg.Wait()
	a.pool.Close()
	a.log.Info("stopped")
}

// OpenPool connects to the configured database and checks that it answers.
func OpenPool(ctx context.Context, cfg config.Database) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, errors.New("DATABASE_URL is not a valid PostgreSQL URL")
	}
	pcfg.MaxConns = cfg.MaxConns
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database %s@%s:%d/%s: %w",
			pcfg.ConnConfig.User, pcfg.ConnConfig.Host, pcfg.ConnConfig.Port, pcfg.ConnConfig.Database, err)
	}
	return pool, nil
}

func migrateUp(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	m, err := migrate.New(pool)
	if err != nil {
		return err
	}
	defer m.Close()
	n, err := m.Up(ctx)
	if err != nil {
		return err
	}
	cur, _, err := m.Versions(ctx)
	if err != nil {
		return err
	}
	log.Info("database schema ready", "applied", n, "version", cur)
	return nil
}
