package reliability_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/testwait"
)

// TestOutageUnderLoad cuts userd's database connections while clients
// deduct credits and Clerk delivers webhooks. During the outage calls fail
// with UNAVAILABLE (or their own deadline) — never INTERNAL, never later
// than their deadline — and the webhook answers 5xx; within 5 s of the
// database's return userd serves again by itself, and every acknowledged
// write is in the ledger.
func TestOutageUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("a failure test under load: not in -short (make test-fast)")
	}
	t.Parallel()
	in, proxy := apptest.StartBehindProxy(t, nil)
	ctx := context.Background()
	clerkIDs := []string{"user_out0", "user_out1", "user_out2"}
	for _, id := range clerkIDs {
		if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := in.Client.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: id, Amount: 1_000_000, IdempotencyKey: "seed"}); err != nil {
			t.Fatal(err)
		}
	}
	const deadline = 2 * time.Second
	var (
		stop        atomic.Bool
		mu          sync.Mutex
		acks        []acknowledged
		lastFailure atomic.Int64 // unix nanos of the latest failed call
		seq         atomic.Int64
		wg          sync.WaitGroup
		hook5xx     atomic.Int64
		hookOK      atomic.Int64
		codesSeen   sync.Map
		// Once the database is back: when (unix nanos), the deductions
		// acknowledged since, and which workers have had a call that
		// started after it succeed.
		restoredAt     atomic.Int64
		okSinceRestore atomic.Int64
		workerBack     [8]atomic.Bool
		workerFailed   [len(workerBack)]atomic.Bool
	)
	record := func(err error) {
		code := status.Code(err)
		n, _ := codesSeen.LoadOrStore(code.String(), new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	for w := range len(workerBack) {
		wg.Go(func() {
			for !stop.Load() {
				id := clerkIDs[w%len(clerkIDs)]
				key := fmt.Sprintf("out-%d", seq.Add(1))
				callCtx, cancel := context.WithTimeout(ctx, deadline)
				start := time.Now()
				r, err := in.Client.DeductCredits(callCtx, &userdv1.DeductCreditsRequest{ClerkUserId: id, Amount: 1, IdempotencyKey: key})
				took := time.Since(start)
				cancel()
				record(err)
				if took > deadline+500*time.Millisecond {
					t.Errorf("a call took %s, past its %s deadline", took, deadline)
				}
				switch status.Code(err) {
				case codes.OK:
					mu.Lock()
					acks = append(acks, acknowledged{id, r.GetTransaction()})
					mu.Unlock()
					if at := restoredAt.Load(); at != 0 && start.UnixNano() > at {
						okSinceRestore.Add(1)
						workerBack[w].Store(true)
					}
				case codes.Unavailable, codes.DeadlineExceeded:
					lastFailure.Store(time.Now().UnixNano())
					workerFailed[w].Store(true)
					// A client's pause before its next try (not a wait
					// for a condition): no busy loop while the
					// database is away.
					time.Sleep(20 * time.Millisecond)
				default:
					t.Errorf("during the outage: %v (want UNAVAILABLE)", err)
				}
			}
		})
	}
	// Webhook deliveries alongside.
	wg.Go(func() {
		for i := 0; !stop.Load(); i++ {
			body := clerkhook.SampleEvent("user.created", clerkhook.SampleUser{ID: fmt.Sprintf("user_hook%d", i), UpdatedAt: time.Now()})
			h, _ := clerkhook.SignHeaders(apptest.WebhookSecret, fmt.Sprintf("msg_out_%d", i), time.Now(), body)
			req, _ := http.NewRequest("POST", in.WebhookURL, bytes.NewReader(body))
			req.Header = h
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("webhook: %v", err)
				return
			}
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusOK:
				hookOK.Add(1)
			case resp.StatusCode >= 500:
				hook5xx.Add(1)
			case resp.StatusCode != http.StatusOK:
				t.Errorf("webhook answered %d", resp.StatusCode)
			}
			time.Sleep(20 * time.Millisecond) // Clerk's deliveries, paced
		}
	})

	// A failed wait ends the test: the load stops before userd does.
	t.Cleanup(func() { stop.Store(true); wg.Wait() })

	// Conditions, not fixed times: the load runs, then the outage lasts
	// until every worker's calls and the webhook have failed during it,
	// then the load runs on until every worker has been served again (and
	// then some). The assertions below judge what happened meanwhile.
	testwait.Until(t, time.Minute, "the load before the outage", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acks) >= 20 && hookOK.Load() > 0
	})
	proxy.Cut()
	testwait.For(time.Minute, func() bool {
		for i := range workerFailed {
			if !workerFailed[i].Load() {
				return false
			}
		}
		return hook5xx.Load() > 0
	})
	proxy.Restore()
	restored := time.Now()
	restoredAt.Store(restored.UnixNano())
	testwait.For(time.Minute, func() bool {
		for i := range workerBack {
			if !workerBack[i].Load() {
				return false
			}
		}
		return okSinceRestore.Load() >= 200
	})
	stop.Store(true)
	wg.Wait()

	recovered := time.Unix(0, lastFailure.Load()).Sub(restored)
	if lastFailure.Load() == 0 {
		t.Fatal("no call failed: the outage did not happen")
	}
	if recovered > 5*time.Second {
		t.Errorf("calls still failed %s after the database came back, want < 5s", recovered)
	}
	if hook5xx.Load() == 0 {
		t.Error("the webhook never answered 5xx during the outage")
	}
	entries := checkLedgers(t, in, clerkIDs, acks)
	tally := map[string]int64{}
	codesSeen.Range(func(k, v any) bool { tally[k.(string)] = v.(*atomic.Int64).Load(); return true })
	t.Logf("calls %v; webhook 5xx %d; last failure %s after the restore; %d acknowledged deductions, %d ledger entries",
		tally, hook5xx.Load(), recovered.Round(time.Millisecond), len(acks), entries)
}
