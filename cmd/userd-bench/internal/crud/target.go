package crud

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/userdproc"
)

const (
	serviceToken  = "bench-service-token-0123456789abcdef"
	webhookSecret = "whsec_dXNlcmQtYmVuY2gtd2ViaG9vay1zZWNyZXQ="
	issuer        = "https://clerk.bench.example"
	// benchTokenLifetime is the lifetime of the session tokens the bench
	// mints once for the whole run (Clerk's live 60 s and are refreshed).
	benchTokenLifetime = 2 * time.Hour
)

// target is one userd binary under test, on a database of its own.
type target struct {
	name     string
	bin      string
	baseline bool
	dbURL    string
	pemKey   string   // public key of the session tokens
	tokens   []string // a session token per seeded user
	// Sequences that keep idempotency keys and webhook users fresh across
	// the rounds.
	keySeq, hookSeq atomic.Int64
	// deliveries are signed ahead of a webhook scenario (presign).
	deliveries   []delivery
	nextDelivery atomic.Int64
	results      map[string][]result
}

// setup makes the session tokens and seeds the users: each with a large
// balance, so that deductions never run out.
func (t *target) setup(ctx context.Context, key *rsa.PrivateKey) error {
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	t.pemKey = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	t.results = map[string][]result{}
	for i := range *nUsers {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
			"iss": issuer, "sub": UserID(i), "exp": time.Now().Add(benchTokenLifetime).Unix(), "iat": time.Now().Unix(), "sid": "sess_" + UserID(i),
		})
		s, err := tok.SignedString(key)
		if err != nil {
			return err
		}
		t.tokens = append(t.tokens, s)
	}
	in, err := t.start(ctx)
	if err != nil {
		return err
	}
	defer in.stop()
	log.Printf("%s: seeding %d users", t.name, *nUsers)
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		first atomic.Value
	)
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < *nUsers; i = int(next.Add(1) - 1) {
				if err := in.seed(i); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := first.Load().(error); err != nil {
		return fmt.Errorf("%s: seed: %w", t.name, err)
	}
	return nil
}

// UserID is the Clerk id of seeded user i: user_bench<i>, the users the
// db/ceilings scripts draw (:n below -D users=N).
func UserID(i int) string { return fmt.Sprintf("user_bench%d", i) }

// measure starts the target, runs one scenario and stops it again, so
// that no idle userd holds database connections while another target or
// pgbench runs. A nil limiter runs at full speed.
func (t *target) measure(ctx context.Context, s scenario, limiter *rate.Limiter, profile bool) error {
	if s.prepare != nil {
		s.prepare(t)
		defer func() { t.deliveries = nil }()
	}
	in, err := t.start(ctx)
	if err != nil {
		return err
	}
	defer in.stop()
	if profile && *pprofDir != "" {
		in.profile = t.profilePath(s.name)
	}
	t.record(s.name, in.load(ctx, s.op, limiter))
	return nil
}

func (t *target) record(name string, res result) {
	t.results[name] = append(t.results[name], res)
	log.Printf("  %-10s %-40s %8.0f/s p50 %.2fms p99 %.2fms CPU %.0fµs/call (client %.0fµs) errors %d",
		t.name, name, res.rps, res.p50, res.p99, res.cpuPerCall, res.clientPerCall, res.errs)
}

func (t *target) profilePath(scenario string) string {
	dir := *pprofDir
	if t.baseline {
		dir = filepath.Join(dir, "baseline")
	}
	return filepath.Join(dir, strings.NewReplacer(" ", "_", "(", "", ")", "", ",", "").Replace(scenario))
}

// instance is a running userd of a target, with clients connected to it.
type instance struct {
	t       *target
	proc    *userdproc.Process
	opsURL  string
	httpURL string
	hookURL string
	conn    *grpc.ClientConn
	grpc    userdv1.UserServiceClient
	health  healthpb.HealthClient // on the same connection as grpc
	ctx     context.Context       // carries the service token
	http    *http.Client
	profile string // file to save the next scenario's CPU profile to
}

// start runs the target's binary on its database, on free loopback ports,
// and waits until it is ready; once more on other ports if it exits at
// start-up (another process may have bound a port it was given).
func (t *target) start(ctx context.Context) (*instance, error) {
	in, err := t.startOnce(ctx)
	if err != nil && errors.Is(err, userdproc.ErrExited) {
		log.Printf("%s: %v; starting it again on other ports", t.name, err)
		in, err = t.startOnce(ctx)
	}
	return in, err
}

func (t *target) startOnce(ctx context.Context) (*instance, error) {
	addrs, err := portAddrs()
	if err != nil {
		return nil, err
	}
	proc, err := userdproc.Start(ctx, userdproc.Config{
		Bin: t.bin, Addrs: addrs,
		Env: []string{
			"DATABASE_URL=" + t.dbURL, "USERD_DB_MAX_CONNS=" + strconv.Itoa(*concurrency),
			"USERD_SERVICE_TOKENS=bench=" + serviceToken, "CLERK_WEBHOOK_SECRET=" + webhookSecret,
			"CLERK_JWT_KEY=" + t.pemKey, "CLERK_ISSUER=" + issuer, "USERD_LOG_FORMAT=json", "USERD_LOG_LEVEL=info",
			// The session tokens minted in setup must outlive the whole run.
			"USERD_JWT_MAX_LIFETIME=" + benchTokenLifetime.String(),
			"USERD_PPROF=" + strconv.FormatBool(*pprofDir != ""),
		},
		// Through a pipe, as under a supervisor or container runtime:
		// writing the access log is part of what a call costs userd.
		Stdout: io.Discard, Stderr: io.Discard,
	}, 60*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%s (%s): %w; run it by hand to see why", t.name, t.bin, err)
	}
	in := &instance{
		t: t, proc: proc,
		opsURL: "http://" + proc.Addrs.Ops, httpURL: "http://" + proc.Addrs.HTTP, hookURL: "http://" + proc.Addrs.Webhook + clerkhook.Path,
		ctx:  metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+serviceToken),
		http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *concurrency * 2}},
	}
	conn, err := grpc.NewClient(proc.Addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		in.stop()
		return nil, err
	}
	in.conn, in.grpc, in.health = conn, userdv1.NewUserServiceClient(conn), healthpb.NewHealthClient(conn)
	return in, nil
}

// stop closes the clients and stops userd gracefully (killing it after
// 30 s).
func (in *instance) stop() {
	if in.conn != nil {
		_ = in.conn.Close()
	}
	in.http.CloseIdleConnections()
	_ = in.proc.Stop(syscall.SIGINT, 30*time.Second)
}

func (in *instance) seed(i int) error { return SeedUser(in.ctx, in.grpc, i) }

// SeedUser creates seeded user i (UserID(i)) with a large balance, so that
// deductions never run out, as the db/ceilings scripts expect. ctx carries
// the service token.
func SeedUser(ctx context.Context, client userdv1.UserServiceClient, i int) error {
	id := UserID(i)
	if _, err := client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: id, Email: fmt.Sprintf("u%d@bench.example", i)}); err != nil {
		return err
	}
	_, err := client.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: id, Amount: 1_000_000_000, IdempotencyKey: "seed"})
	return err
}

// portAddrs returns four loopback addresses whose ports, in -ports, were
// free just now; without -ports, none (userdproc picks free ports).
func portAddrs() (userdproc.Addrs, error) {
	if *ports == "" {
		return userdproc.Addrs{}, nil
	}
	lo, hi, err := portRange(*ports)
	if err != nil {
		return userdproc.Addrs{}, err
	}
	var (
		a    userdproc.Addrs
		held []net.Listener
	)
	defer func() {
		for _, ln := range held {
			_ = ln.Close()
		}
	}()
	for _, p := range []*string{&a.GRPC, &a.HTTP, &a.Webhook, &a.Ops} {
		for try := 0; ; try++ {
			if try == 100 {
				return userdproc.Addrs{}, fmt.Errorf("-ports %s: no free port found", *ports)
			}
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(lo+mrand.IntN(hi-lo+1))))
			if err == nil {
				held = append(held, ln) // held until all four are chosen: distinct
				*p = ln.Addr().String()
				break
			}
		}
	}
	return a, nil
}

// portRange parses "lo-hi".
func portRange(s string) (lo, hi int, err error) {
	l, h, ok := strings.Cut(s, "-")
	if lo, err = strconv.Atoi(l); ok && err == nil {
		hi, err = strconv.Atoi(h)
	}
	if !ok || err != nil || lo < 1 || hi > 65535 || hi-lo < 3 {
		return 0, 0, fmt.Errorf("-ports %q: want lo-hi, a range of at least 4 ports", s)
	}
	return lo, hi, nil
}
