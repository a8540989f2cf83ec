// Package apptest runs a whole userd in-process for end-to-end tests: a
// fresh database, real listeners on loopback ports, real clients.
package apptest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/app"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
)

// Instance is a running userd.
type Instance struct {
	App    *app.App
	Conn   *grpc.ClientConn
	Client userdv1.UserServiceClient
	// Store reads and writes the instance's database directly, for
	// assertions.
	Store *store.Store
}

// Config returns the configuration Start uses before tweaks: a fresh
// database and loopback listeners on free ports.
func Config(t testing.TB) config.Serve {
	return config.Serve{
		Database:       config.Database{URL: testdb.URL(t), MaxConns: 16},
		Log:            config.Log{LogFormat: "text", LogLevel: "error"},
		AutoMigrate:    true,
		GRPCAddr:       "127.0.0.1:0",
		InitialCredits: 10,
		ShutdownGrace:  5 * time.Second,
	}
}

// Start runs userd with Config(t), changed by tweak if not nil, until the
// test ends.
func Start(t testing.TB, tweak func(*config.Serve)) *Instance {
	t.Helper()
	cfg := Config(t)
	if tweak != nil {
		tweak(&cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("start userd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	conn, err := grpc.NewClient(a.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		t.Fatalf("dial userd: %v", err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("userd stopped with: %v", err)
		}
	})
	return &Instance{
		App:    a,
		Conn:   conn,
		Client: userdv1.NewUserServiceClient(conn),
		Store:  store.New(testdb.Connect(t, cfg.Database.URL)),
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
