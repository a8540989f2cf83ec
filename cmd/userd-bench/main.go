// Command userd-bench measures userd against the ceiling of its own SQL:
// it starts the userd binary on a fresh database, seeds users, drives gRPC,
// REST and webhook load, runs pgbench with the same statements at the same
// concurrency, and prints (and writes to BENCHMARKS.md) a table of rates,
// latencies, userd's CPU and peak RSS, with each operation's ratio to its
// ceiling. Run it with `make bench`.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/procstat"
)

// notesMarker starts the part of BENCHMARKS.md a run keeps.
const notesMarker = "<!-- notes: kept by make bench -->"

const (
	serviceToken  = "bench-service-token-0123456789abcdef"
	webhookSecret = "whsec_dXNlcmQtYmVuY2gtd2ViaG9vay1zZWNyZXQ="
	issuer        = "https://clerk.bench.example"
	// benchTokenLifetime is the lifetime of the session tokens the bench
	// mints once for the whole run (Clerk's live 60 s and are refreshed).
	benchTokenLifetime = 2 * time.Hour
)

var (
	binPath     = flag.String("userd", "bin/userd", "userd binary to measure")
	serverURL   = flag.String("server", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the bench database on (embedded when unreachable)")
	concurrency = flag.Int("c", 32, "concurrent clients (and pgbench clients)")
	duration    = flag.Duration("d", 5*time.Second, "measured time per scenario")
	warmup      = flag.Duration("warmup", time.Second, "unmeasured time before each scenario")
	rounds      = flag.Int("rounds", 3, "rounds; the table shows medians")
	nUsers      = flag.Int("users", 1000, "seeded users")
	out         = flag.String("out", "BENCHMARKS.md", "where to write the report (empty: nowhere)")
	pprofDir    = flag.String("pprof", "", "if set, save a CPU profile of userd for each scenario of the first round here")
)

func main() {
	flag.Parse()
	log.SetFlags(0)
	if err := run(context.Background()); err != nil {
		log.Fatalf("userd-bench: %v", err)
	}
}

// result is one scenario's measurement.
type result struct {
	rps, p50, p99, cpu, rssMiB float64
	errs                       int64
}

type scenario struct {
	name    string
	ceiling string // pgbench script it is compared with, or ""
	run     func(ctx context.Context, limiter *rate.Limiter) result
}

type bench struct {
	opsURL  string
	profile string // file to save the next scenario's CPU profile to
	dbURL   string
	grpc    userdv1.UserServiceClient
	ctx     context.Context
	httpURL string
	hookURL string
	tokens  []string
	userd   *exec.Cmd
	hookSeq atomic.Int64
	keySeq  atomic.Int64
	http    *http.Client
}

func run(ctx context.Context) error {
	dbURL, cleanup, err := benchDatabase(ctx)
	if err != nil {
		return err
	}
	defer cleanup()

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pemKey := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))

	ports := make([]string, 4)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return err
		}
	}
	userd := exec.Command(*binPath, "serve")
	userd.Env = append(os.Environ(),
		"DATABASE_URL="+dbURL, "USERD_DB_MAX_CONNS="+strconv.Itoa(*concurrency),
		"USERD_GRPC_ADDR="+ports[0], "USERD_HTTP_ADDR="+ports[1], "USERD_WEBHOOK_ADDR="+ports[2], "USERD_OPS_ADDR="+ports[3],
		"USERD_SERVICE_TOKENS=bench="+serviceToken, "CLERK_WEBHOOK_SECRET="+webhookSecret,
		"CLERK_JWT_KEY="+pemKey, "CLERK_ISSUER="+issuer, "USERD_LOG_FORMAT=json", "USERD_LOG_LEVEL=info",
		// The session tokens minted below must outlive the whole run.
		"USERD_JWT_MAX_LIFETIME="+benchTokenLifetime.String(),
		"USERD_PPROF="+strconv.FormatBool(*pprofDir != ""),
	)
	userd.Stdout, userd.Stderr = io.Discard, io.Discard
	if err := userd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", *binPath, err)
	}
	defer func() { _ = userd.Process.Signal(os.Interrupt); _ = userd.Wait() }()
	if err := waitReady("http://" + ports[3] + "/readyz"); err != nil {
		return err
	}
	conn, err := grpc.NewClient(ports[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	b := &bench{
		opsURL: "http://" + ports[3],
		dbURL:  dbURL, grpc: userdv1.NewUserServiceClient(conn), userd: userd,
		ctx:     metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+serviceToken),
		httpURL: "http://" + ports[1], hookURL: "http://" + ports[2] + clerkhook.Path,
		http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *concurrency * 2}},
	}
	log.Printf("seeding %d users", *nUsers)
	for i := range *nUsers {
		id := userID(i)
		if _, err := b.grpc.EnsureUser(b.ctx, &userdv1.EnsureUserRequest{ClerkUserId: id, Email: fmt.Sprintf("u%d@bench.example", i)}); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
		if _, err := b.grpc.GrantCredits(b.ctx, &userdv1.GrantCreditsRequest{ClerkUserId: id, Amount: 1_000_000_000, IdempotencyKey: "seed"}); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
			"iss": issuer, "sub": id, "exp": time.Now().Add(benchTokenLifetime).Unix(), "iat": time.Now().Unix(), "sid": "sess_" + id,
		})
		s, err := tok.SignedString(key)
		if err != nil {
			return err
		}
		b.tokens = append(b.tokens, s)
	}
	scripts, err := writePgbenchScripts(*nUsers)
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(scripts["get_user"]))

	scenarios := []scenario{
		{"gRPC GetUser", "get_user", b.load(b.getUser)},
		{"gRPC EnsureUser (existing)", "get_user", b.load(b.ensureExisting)},
		{"gRPC DeductCredits", "deduct", b.load(b.deduct)},
		{"REST GetUser (session JWT)", "get_user", b.load(b.restGetUser)},
		{"webhook user.created (signed, unique)", "webhook_create", b.load(b.webhook)},
	}
	all := map[string][]result{}
	ceilings := map[string][]float64{}
	for r := range *rounds {
		log.Printf("round %d of %d", r+1, *rounds)
		for _, s := range scenarios {
			if *pprofDir != "" && r == 0 {
				b.profile = filepath.Join(*pprofDir, strings.NewReplacer(" ", "_", "(", "", ")", "", ",", "").Replace(s.name)+".pprof")
			}
			res := s.run(ctx, nil)
			b.profile = ""
			all[s.name] = append(all[s.name], res)
			log.Printf("  %-40s %8.0f/s p50 %.2fms p99 %.2fms errors %d", s.name, res.rps, res.p50, res.p99, res.errs)
		}
		for name, path := range scripts {
			tps, err := pgbench(dbURL, path)
			if err != nil {
				return err
			}
			ceilings[name] = append(ceilings[name], tps)
			log.Printf("  pgbench %-32s %8.0f tps", name, tps)
		}
		// p99 at half of gRPC GetUser's peak.
		half := median(rates(all["gRPC GetUser"])) / 2
		res := b.load(b.getUser)(ctx, rate.NewLimiter(rate.Limit(half), *concurrency))
		all["gRPC GetUser at half peak"] = append(all["gRPC GetUser at half peak"], res)
		log.Printf("  %-40s %8.0f/s p50 %.2fms p99 %.2fms", "gRPC GetUser at half peak", res.rps, res.p50, res.p99)
	}
	report := render(scenarios, all, ceilings)
	fmt.Print(report)
	if *out != "" {
		// Hand-written analysis below the marker survives a new run.
		if old, err := os.ReadFile(*out); err == nil {
			if i := bytes.Index(old, []byte(notesMarker)); i >= 0 {
				report += "\n" + string(old[i:])
			}
		}
		return os.WriteFile(*out, []byte(report), 0o644)
	}
	return nil
}

func saveProfile(opsURL, path string, d time.Duration) {
	resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", opsURL, int(d.Seconds())))
	if err != nil {
		log.Printf("profile: %v", err)
		return
	}
	defer resp.Body.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = io.Copy(f, resp.Body)
}

func userID(i int) string { return fmt.Sprintf("user_bench%d", i) }

// load runs op from -c workers for -d (after -warmup), optionally paced
// by limiter, and measures latency, errors, userd's CPU and peak RSS.
func (b *bench) load(op func(i int) error) func(context.Context, *rate.Limiter) result {
	return func(ctx context.Context, limiter *rate.Limiter) result {
		var (
			measuring atomic.Bool
			stop      atomic.Bool
			errs      atomic.Int64
			mu        sync.Mutex
			lat       []time.Duration
			wg        sync.WaitGroup
		)
		for w := range *concurrency {
			wg.Go(func() {
				local := make([]time.Duration, 0, 1<<14)
				for i := w; !stop.Load(); i += *concurrency {
					if limiter != nil {
						_ = limiter.Wait(ctx)
					}
					start := time.Now()
					err := op(i)
					if measuring.Load() {
						local = append(local, time.Since(start))
						if err != nil {
							errs.Add(1)
						}
					}
				}
				mu.Lock()
				lat = append(lat, local...)
				mu.Unlock()
			})
		}
		time.Sleep(*warmup)
		if b.profile != "" {
			wg.Go(func() { saveProfile(b.opsURL, b.profile, *duration) })
		}
		cpu0 := procstat.CPUSeconds(b.userd.Process.Pid)
		measuring.Store(true)
		start := time.Now()
		peak := 0.0
		for time.Since(start) < *duration {
			peak = max(peak, procstat.RSSMiB(b.userd.Process.Pid))
			time.Sleep(50 * time.Millisecond)
		}
		measuring.Store(false)
		elapsed := time.Since(start)
		cpu := procstat.CPUSeconds(b.userd.Process.Pid) - cpu0
		stop.Store(true)
		wg.Wait()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		pct := func(p float64) float64 {
			if len(lat) == 0 {
				return 0
			}
			return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) / 1000
		}
		return result{rps: float64(len(lat)) / elapsed.Seconds(), p50: pct(.5), p99: pct(.99), cpu: cpu, rssMiB: peak, errs: errs.Load()}
	}
}

func (b *bench) getUser(i int) error {
	_, err := b.grpc.GetUser(b.ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: userID(i % *nUsers)}})
	return err
}

func (b *bench) ensureExisting(i int) error {
	_, err := b.grpc.EnsureUser(b.ctx, &userdv1.EnsureUserRequest{ClerkUserId: userID(i % *nUsers)})
	return err
}

func (b *bench) deduct(i int) error {
	_, err := b.grpc.DeductCredits(b.ctx, &userdv1.DeductCreditsRequest{
		ClerkUserId: userID(i % *nUsers), Amount: 1, IdempotencyKey: "b" + strconv.FormatInt(b.keySeq.Add(1), 36),
	})
	return err
}

func (b *bench) restGetUser(i int) error {
	req, _ := http.NewRequest(http.MethodGet, b.httpURL+"/v1/users/me", nil)
	req.Header.Set("Authorization", "Bearer "+b.tokens[i%len(b.tokens)])
	return b.do(req)
}

func (b *bench) webhook(int) error {
	n := b.hookSeq.Add(1)
	now := time.Now()
	body := clerkhook.SampleEvent("user.created", clerkhook.SampleUser{
		ID: "user_hook" + strconv.FormatInt(n, 36), Email: "h" + strconv.FormatInt(n, 36) + "@bench.example", UpdatedAt: now,
	})
	h, err := clerkhook.SignHeaders(webhookSecret, "msg_bench_"+strconv.FormatInt(n, 36), now, body)
	if err != nil {
		return err
	}
	req, _ := http.NewRequest(http.MethodPost, b.hookURL, bytes.NewReader(body))
	req.Header = h
	return b.do(req)
}

func (b *bench) do(req *http.Request) error {
	resp, err := b.http.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	return nil
}
