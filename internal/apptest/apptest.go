// Package apptest runs a whole userd in-process for end-to-end tests: a
// fresh database, real listeners on loopback ports, real clients.
package apptest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/app"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/config/configtest"
	"github.com/userd/userd/internal/faultproxy"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// WebhookSecret is the signing secret Config sets (whsec_ + base64).
const WebhookSecret = "whsec_dXNlcmQtdGVzdC13ZWJob29rLXNlY3JldC0wMQ=="

// ServiceToken is the token of the service "tests" that Config configures
// and Instance.Client sends unless a call carries its own authorization.
const ServiceToken = "test-service-token-0123456789abcdef"

// Instance is a running userd.
type Instance struct {
	App    *app.App
	Conn   *grpc.ClientConn
	Client userdv1.UserServiceClient
	// Store reads and writes the instance's database directly (never
	// through a fault proxy a tweak may have set), for assertions.
	Store *store.Store
	// DB is the pool Store uses: the instance's database, directly, for
	// assertions the store has no method for.
	DB *pgxpool.Pool
	// WebhookURL is http://.../webhooks/clerk, or "" when the listener is
	// off.
	WebhookURL string
	// HTTPURL is the HTTP API's base URL (http://host:port), or "" when the
	// listener is off.
	HTTPURL string
	// OpsURL is the operations listener's base URL, or "" when it is off.
	OpsURL string
}

// Config returns the configuration Start uses before tweaks: the tests'
// one fixture (configtest.Valid) with a fresh database, loopback listeners
// on free ports, this package's webhook secret and service token, no
// Clerk to reach, quieter logs, and a shorter grace and feed poll.
func Config(t testing.TB) config.Serve {
	c := configtest.Valid()
	c.Database.URL = testdb.URL(t)
	c.Log = config.Log{LogFormat: "text", LogLevel: "error"}
	c.AutoMigrate = true
	c.GRPCAddr, c.HTTPAddr, c.OpsAddr, c.WebhookAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	c.ServiceTokens = "tests=" + ServiceToken
	c.Clerk.WebhookSecret = WebhookSecret
	c.Clerk.JWKSURL = ""
	c.Clerk.ClerkAPI.APIURL, c.Clerk.ClerkAPI.SecretKey = "https://api.clerk.invalid", ""
	c.ShutdownGrace = 5 * time.Second
	c.Feed.FeedPollInterval = 20 * time.Millisecond
	return c
}

// Start runs userd with Config(t), changed by tweak if not nil, until the
// test ends.
func Start(t testing.TB, tweak func(*config.Serve)) *Instance {
	t.Helper()
	cfg := Config(t)
	directURL := cfg.Database.URL
	if tweak != nil {
		tweak(&cfg)
	}
	return start(t, cfg, directURL)
}

// StartBehindProxy is Start with userd reaching its database through a
// fault proxy, which the test can cut and restore.
func StartBehindProxy(t testing.TB, tweak func(*config.Serve)) (*Instance, *faultproxy.Proxy) {
	t.Helper()
	cfg := Config(t)
	directURL := cfg.Database.URL
	proxy := faultproxy.New(t, directURL)
	cfg.Database.URL = proxy.URL
	if tweak != nil {
		tweak(&cfg)
	}
	return start(t, cfg, directURL), proxy
}

func start(t testing.TB, cfg config.Serve, directURL string) *Instance {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// A fuzz target must not log through f, so fuzz runs stay quiet.
	if _, fuzzing := t.(*testing.F); testing.Verbose() && !fuzzing {
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
	conn, err := grpc.NewClient(a.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(serviceToken), grpc.WithStreamInterceptor(serviceTokenStream))
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
	db := testdb.Connect(t, directURL)
	in := &Instance{
		App:    a,
		Conn:   conn,
		Client: userdv1.NewUserServiceClient(conn),
		Store:  store.New(db, store.Options{}),
		DB:     db,
	}
	if addr := a.WebhookAddr(); addr != nil {
		in.WebhookURL = "http://" + addr.String() + clerkhook.Path
	}
	if addr := a.HTTPAddr(); addr != nil {
		in.HTTPURL = "http://" + addr.String()
	}
	if addr := a.OpsAddr(); addr != nil {
		in.OpsURL = "http://" + addr.String()
	}
	return in
}

// serviceToken authenticates calls as the service "tests" unless the call
// set its own authorization metadata.
func serviceToken(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if md, ok := metadata.FromOutgoingContext(ctx); !ok || len(md.Get("authorization")) == 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+ServiceToken)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// serviceTokenStream is serviceToken for streams (WatchUserEvents).
func serviceTokenStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if md, ok := metadata.FromOutgoingContext(ctx); !ok || len(md.Get("authorization")) == 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+ServiceToken)
	}
	return streamer(ctx, desc, cc, method, opts...)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// Books reads the ledgers of the given users and reports to t every broken
// invariant: an entry whose balance_after is not the running sum, a
// negative running balance, a key applied twice, a balance that is not the
// sum of its ledger. It returns every entry by id, for checking what
// callers were told against it.
func Books(t testing.TB, st *store.Store, clerkIDs []string) map[int64]users.Transaction {
	t.Helper()
	ctx := context.Background()
	byID := map[int64]users.Transaction{}
	for _, id := range clerkIDs {
		u, err := st.GetUserByClerkIDIncludingDeleted(ctx, id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		ts, err := st.ListCreditTransactions(ctx, u.ID, 0, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		keys := map[string]bool{}
		for i := len(ts) - 1; i >= 0; i-- { // oldest first
			tx := ts[i]
			sum += tx.Delta
			if tx.BalanceAfter != sum || sum < 0 {
				t.Errorf("%s: entry %d balance_after %d, running sum %d", id, tx.ID, tx.BalanceAfter, sum)
			}
			if tx.IdempotencyKey != "" && keys[tx.IdempotencyKey] {
				t.Errorf("%s: key %q applied twice", id, tx.IdempotencyKey)
			}
			keys[tx.IdempotencyKey] = true
			byID[tx.ID] = tx
		}
		if u.Credits != sum {
			t.Errorf("%s: credits %d, ledger sum %d", id, u.Credits, sum)
		}
	}
	return byID
}
