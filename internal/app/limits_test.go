package app_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/config"
)

// openHealthWatch opens a Health/Watch stream on its own connection and
// returns it once the first status arrived, or the error that ended it.
func openHealthWatch(t *testing.T, addr, token string) (healthpb.Health_WatchClient, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return nil, err
	}
	if _, err := w.Recv(); err != nil {
		return nil, err
	}
	return w, nil
}

// TestHealthWatchLimit: health needs no credentials, so its watches are
// bounded: beyond USERD_HEALTH_WATCH_MAX, RESOURCE_EXHAUSTED; Check still
// answers; a watch with a service token is not counted.
func TestHealthWatchLimit(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, func(c *config.Serve) { c.HealthWatchMax = 2 })
	addr := in.App.GRPCAddr().String()
	for i := range 2 {
		if _, err := openHealthWatch(t, addr, ""); err != nil {
			t.Fatalf("watch %d: %v", i+1, err)
		}
	}
	if _, err := openHealthWatch(t, addr, ""); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("third unauthenticated watch: %v, want RESOURCE_EXHAUSTED", err)
	}
	if _, err := openHealthWatch(t, addr, "not-a-token"); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("watch with an invalid token: %v, want RESOURCE_EXHAUSTED", err)
	}
	if _, err := openHealthWatch(t, addr, apptest.ServiceToken); err != nil {
		t.Errorf("watch with a service token: %v", err)
	}
	if resp, err := healthpb.NewHealthClient(in.Conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Check while the watches are full: %v, %v", resp, err)
	}
}

// TestConnectionMaxAge: a connection holding a stream is not held
// forever: at USERD_GRPC_MAX_CONNECTION_AGE plus the grace, its stream is
// cut (UNAVAILABLE) and the client must reconnect.
func TestConnectionMaxAge(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, func(c *config.Serve) {
		c.GRPCMaxConnectionAge, c.GRPCMaxConnectionAgeGrace = time.Second, time.Second
	})
	w, err := openHealthWatch(t, in.App.GRPCAddr().String(), "")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		if _, err = w.Recv(); err != nil {
			break
		}
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("the watch ended with %v, want UNAVAILABLE", err)
	}
	t.Logf("the watch was cut %s after its first status", time.Since(start).Round(time.Millisecond))
}
