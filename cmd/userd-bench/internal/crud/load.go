package crud

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/procstat"
)

// Scenarios the report and its targets name.
const (
	grpcGetUser    = "gRPC GetUser"
	restGetUser    = "REST GetUser (session JWT)"
	grpcDeduct     = "gRPC DeductCredits"
	restDeduct     = "REST DeductCredits"
	webhookCreated = "webhook user.created (signed, unique)"
	halfPeak       = "gRPC GetUser at half peak"
	// healthFloor is the floor of a gRPC call on the same userd, through
	// the same client and interceptor chain: grpc.health.v1.Health/Check
	// does no authentication and no database read.
	healthFloor = "gRPC Health/Check (floor)"
)

// scenario is one operation driven at full speed.
type scenario struct {
	name    string
	ceiling string // the db/ceilings script it is compared with, or ""
	op      func(in *instance, i int) error
	// prepare, if set, runs before the scenario's userd starts.
	prepare func(t *target)
}

var scenarios = []scenario{
	// The floor right before GetUser: the two are compared.
	{healthFloor, "", (*instance).healthCheck, nil},
	{grpcGetUser, "get_user", (*instance).getUser, nil},
	{"gRPC EnsureUser (existing)", "get_user", (*instance).ensureExisting, nil},
	{restGetUser, "get_user", (*instance).restGetUser, nil},
	{grpcDeduct, "deduct", (*instance).deduct, nil},
	{grpcOrgDeduct, "org_deduct", (*instance).orgDeduct, (*target).prepareOrgs},
	{restDeduct, "deduct", (*instance).restDeduct, nil},
	{"gRPC GrantCredits", "grant", (*instance).grant, nil},
	{"gRPC SetPlan (PRO, bonus 1)", "set_plan", (*instance).setPlan, nil},
	{webhookCreated, "webhook_create", (*instance).webhook, (*target).presign},
}

// result is one scenario's measurement.
type result struct {
	rps, p50, p99 float64
	// cpu is userd's CPU seconds over the measured time, cpuPerCall the
	// same in µs per completed call; clientPerCall is the load generator's
	// (this process's) CPU µs per call, which shares the cores.
	cpu, cpuPerCall, clientPerCall float64
	rssMiB                         float64
	errs                           int64
	// failed: every call failed (a baseline without the operation), so
	// rps counts errors, not work.
	failed bool
}

// load runs op from -c workers for -d (after -warmup), optionally paced
// by limiter, and measures latency, errors, userd's CPU and peak RSS.
func (in *instance) load(ctx context.Context, op func(*instance, int) error, limiter *rate.Limiter) result {
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
				err := op(in, i)
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
	if in.profile != "" {
		wg.Go(func() { saveProfile(in.opsURL+"/debug/pprof/profile", in.profile+".pprof", *duration) })
		wg.Go(func() { saveProfile(in.opsURL+"/debug/pprof/allocs", in.profile+".allocs.pprof", *duration) })
	}
	pid := in.proc.Pid()
	cpu0, client0 := procstat.CPUSeconds(pid), procstat.CPUSeconds(os.Getpid())
	measuring.Store(true)
	start := time.Now()
	peak := 0.0
	for time.Since(start) < *duration {
		peak = max(peak, procstat.RSSMiB(pid))
		time.Sleep(50 * time.Millisecond)
	}
	measuring.Store(false)
	elapsed := time.Since(start)
	cpu, client := procstat.CPUSeconds(pid)-cpu0, procstat.CPUSeconds(os.Getpid())-client0
	stop.Store(true)
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) / 1000
	}
	res := result{rps: float64(len(lat)) / elapsed.Seconds(), p50: pct(.5), p99: pct(.99), cpu: cpu, rssMiB: peak, errs: errs.Load()}
	res.failed = res.errs > 0 && res.errs == int64(len(lat))
	if len(lat) > 0 {
		res.cpuPerCall = cpu / float64(len(lat)) * 1e6
		res.clientPerCall = client / float64(len(lat)) * 1e6
	}
	return res
}

// saveProfile saves what a pprof endpoint records over d.
func saveProfile(endpoint, path string, d time.Duration) {
	resp, err := http.Get(fmt.Sprintf("%s?seconds=%d", endpoint, int(d.Seconds())))
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

// key returns a fresh idempotency key.
func (in *instance) key(prefix string) string {
	return prefix + strconv.FormatInt(in.t.keySeq.Add(1), 36)
}

func (in *instance) getUser(i int) error {
	_, err := in.grpc.GetUser(in.ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: UserID(i % *nUsers)}})
	return err
}

func (in *instance) healthCheck(int) error {
	res, err := in.health.Check(in.ctx, &healthpb.HealthCheckRequest{})
	if err == nil && res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		err = fmt.Errorf("health: %s", res.GetStatus())
	}
	return err
}

func (in *instance) ensureExisting(i int) error {
	_, err := in.grpc.EnsureUser(in.ctx, &userdv1.EnsureUserRequest{ClerkUserId: UserID(i % *nUsers)})
	return err
}

func (in *instance) restGetUser(i int) error {
	req, _ := http.NewRequest(http.MethodGet, in.httpURL+"/v1/users/me", nil)
	req.Header.Set("Authorization", "Bearer "+in.t.tokens[i%len(in.t.tokens)])
	return in.do(req)
}

func (in *instance) deduct(i int) error {
	_, err := in.grpc.DeductCredits(in.ctx, &userdv1.DeductCreditsRequest{
		ClerkUserId: UserID(i % *nUsers), Amount: 1, IdempotencyKey: in.key("d"),
	})
	return err
}

// restDeduct is a backend service deducting over REST with its token.
func (in *instance) restDeduct(i int) error {
	body := `{"amount":"1","idempotencyKey":"` + in.key("r") + `"}`
	req, _ := http.NewRequest(http.MethodPost, in.httpURL+"/v1/users/"+UserID(i%*nUsers)+"/credits:deduct", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+serviceToken)
	req.Header.Set("Content-Type", "application/json")
	return in.do(req)
}

func (in *instance) grant(i int) error {
	_, err := in.grpc.GrantCredits(in.ctx, &userdv1.GrantCreditsRequest{
		ClerkUserId: UserID(i % *nUsers), Amount: 1, IdempotencyKey: in.key("g"),
	})
	return err
}

func (in *instance) setPlan(i int) error {
	_, err := in.grpc.SetPlan(in.ctx, &userdv1.SetPlanRequest{
		ClerkUserId: UserID(i % *nUsers), Plan: userdv1.Plan_PLAN_PRO, BonusCredits: 1, IdempotencyKey: in.key("p"),
	})
	return err
}

// delivery is a signed webhook request body and its headers.
type delivery struct {
	body   []byte
	header http.Header
}

// presignedDeliveries bounds what presign prepares (about 3 KB each): at
// most this many deliveries of a scenario are signed ahead, the rest while
// it runs.
const presignedDeliveries = 40_000

// presign builds and signs the next scenario's deliveries before it is
// measured. Building a Clerk payload and signing it is Svix's work, about
// 120 µs of CPU each here: done during the measurement, it took that CPU
// from userd and PostgreSQL on the shared cores.
func (t *target) presign() {
	n := min(presignedDeliveries, int(float64(*concurrency)*(*warmup+*duration).Seconds()*250))
	t.deliveries = make([]delivery, n)
	for i := range t.deliveries {
		t.deliveries[i] = t.signDelivery()
	}
	t.nextDelivery.Store(0)
}

func (t *target) signDelivery() delivery {
	n := strconv.FormatInt(t.hookSeq.Add(1), 36)
	now := time.Now()
	body := clerkhook.SampleEvent("user.created", clerkhook.SampleUser{
		ID: "user_hook" + n, Email: "h" + n + "@bench.example", UpdatedAt: now,
	})
	h, err := clerkhook.SignHeaders(webhookSecret, "msg_bench_"+n, now, body)
	if err != nil {
		panic(err) // the secret is a constant of this program
	}
	return delivery{body: body, header: h}
}

func (in *instance) webhook(int) error {
	var d delivery
	if i := in.t.nextDelivery.Add(1) - 1; i < int64(len(in.t.deliveries)) {
		d = in.t.deliveries[i]
	} else {
		d = in.t.signDelivery()
	}
	req, _ := http.NewRequest(http.MethodPost, in.hookURL, bytes.NewReader(d.body))
	req.Header = d.header
	return in.do(req)
}

func (in *instance) do(req *http.Request) error {
	resp, err := in.http.Do(req)
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
