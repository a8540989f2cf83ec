package reliability_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/config"
)

// frozenGuard is how long the frozen-database tests wait for an answer
// before calling the call hung: far beyond any bound they configure.
const frozenGuard = 30 * time.Second

// boundSlack is what an answer may take beyond its bound: scheduling on a
// busy test machine, not work userd does.
const boundSlack = time.Second

// probe is one call made while the database is frozen.
type probe struct {
	name string
	// call makes the call and describes its answer; bounded reports
	// whether the answer is the one a bounded wait must give (503/504,
	// UNAVAILABLE/DEADLINE_EXCEEDED).
	call func() (answer string, bounded bool)
}

type probeResult struct {
	name    string
	answer  string
	bounded bool
	took    time.Duration
}

// runProbes makes every call at once and waits up to frozenGuard for all
// answers. Calls still unanswered then are reported as hung; they finish
// in the background once the database thaws.
func runProbes(t *testing.T, probes []probe) []probeResult {
	t.Helper()
	results := make(chan probeResult, len(probes))
	for _, p := range probes {
		go func() {
			start := time.Now()
			answer, bounded := p.call()
			results <- probeResult{p.name, answer, bounded, time.Since(start)}
		}()
	}
	guard := time.NewTimer(frozenGuard)
	defer guard.Stop()
	var out []probeResult
	answered := map[string]bool{}
	for len(out) < len(probes) {
		select {
		case r := <-results:
			out = append(out, r)
			answered[r.name] = true
		case <-guard.C:
			for _, p := range probes {
				if !answered[p.name] {
					t.Errorf("%s: no answer after %s: the call hangs with the database", p.name, frozenGuard)
				}
			}
			return out
		}
	}
	return out
}

// frozenProbes are the calls made during the freeze: REST and gRPC reads
// and deductions without any client deadline, and a webhook delivery.
func frozenProbes(in *apptest.Instance, clerkID, suffix string) []probe {
	return []probe{
		{"REST GET /v1/users/" + clerkID, func() (string, bool) {
			code, body := restCall(in, "GET", "/v1/users/"+clerkID, nil)
			return fmt.Sprintf("%d %s", code, body), code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
		}},
		{"REST deduct", func() (string, bool) {
			code, body := restCall(in, "POST", "/v1/users/"+clerkID+"/credits:deduct",
				map[string]any{"amount": 1, "idempotencyKey": "frozen-rest-" + suffix})
			return fmt.Sprintf("%d %s", code, body), code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
		}},
		{"gRPC GetUser", func() (string, bool) {
			_, err := in.Client.GetUser(context.Background(), &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: clerkID}})
			return status.Code(err).String(), status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded
		}},
		{"gRPC DeductCredits", func() (string, bool) {
			_, err := in.Client.DeductCredits(context.Background(), &userdv1.DeductCreditsRequest{
				ClerkUserId: clerkID, Amount: 1, IdempotencyKey: "frozen-grpc-" + suffix,
			})
			return status.Code(err).String(), status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded
		}},
		{"webhook", func() (string, bool) {
			code, body := deliver(in, "msg_frozen_"+suffix, "user_frozen_hook_"+suffix)
			return fmt.Sprintf("%d %s", code, body), code == http.StatusServiceUnavailable
		}},
	}
}

// TestFrozenDatabase freezes userd's database — connections stay open,
// nothing is answered, as when PostgreSQL's processes are stopped — with a
// request bound of 2 s. Every kind of call (REST and gRPC without a client
// deadline, webhook deliveries) is answered 503/UNAVAILABLE within the
// bound, twice: with the pool's connections hung, and again with the pool
// full of them. After the thaw the same calls succeed within seconds
// without a restart; nothing is half-written (the ledger adds up), and
// retrying the deductions and deliveries answered 503 applies each
// exactly once.
func TestFrozenDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("a failure test under load: not in -short (make test-fast)")
	}
	t.Parallel()
	const bound = 2 * time.Second
	in, proxy := apptest.StartBehindProxy(t, func(c *config.Serve) {
		c.RequestTimeout = bound
		c.DBAcquireTimeout = 500 * time.Millisecond
	})
	ctx := context.Background()
	const clerkID = "user_frozen"
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: clerkID}); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Client.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: clerkID, Amount: 100, IdempotencyKey: "seed"}); err != nil {
		t.Fatal(err)
	}

	proxy.Freeze()
	for round := range 2 {
		for _, r := range runProbes(t, frozenProbes(in, clerkID, strconv.Itoa(round))) {
			t.Logf("frozen, round %d: %-22s answered in %5s: %s", round, r.name, r.took.Round(time.Millisecond), r.answer)
			if !r.bounded {
				t.Errorf("frozen, round %d: %s answered %s, want 503/504 or UNAVAILABLE/DEADLINE_EXCEEDED", round, r.name, r.answer)
			}
			if r.took > bound+boundSlack {
				t.Errorf("frozen, round %d: %s took %s, beyond the %s bound", round, r.name, r.took, bound)
			}
		}
	}
	proxy.Thaw()
	thawed := time.Now()

	// Service resumes by itself: each call succeeds again within seconds.
	var acks []acknowledged
	resume := []struct {
		name string
		call func() error
	}{
		{"REST GET", func() error {
			if code, body := restCall(in, "GET", "/v1/users/"+clerkID, nil); code != http.StatusOK {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		}},
		{"REST deduct", func() error {
			code, body := restCall(in, "POST", "/v1/users/"+clerkID+"/credits:deduct", map[string]any{"amount": 1, "idempotencyKey": "after-rest"})
			if code != http.StatusOK {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		}},
		{"gRPC GetUser", func() error {
			_, err := in.Client.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: clerkID}})
			return err
		}},
		{"gRPC DeductCredits", func() error {
			r, err := in.Client.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: clerkID, Amount: 1, IdempotencyKey: "after-grpc"})
			if err == nil {
				acks = append(acks, acknowledged{clerkID, r.GetTransaction()})
			}
			return err
		}},
		{"webhook redelivery", func() error {
			if code, body := deliver(in, "msg_frozen_0", "user_frozen_hook_0"); code != http.StatusOK {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		}},
	}
	for _, c := range resume {
		for {
			err := c.call()
			if err == nil {
				t.Logf("after the thaw: %s succeeded %s later", c.name, time.Since(thawed).Round(time.Millisecond))
				break
			}
			if time.Since(thawed) > 10*time.Second {
				t.Fatalf("after the thaw: %s still fails 10s later: %v", c.name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// Nothing is half-written. A deduction answered UNAVAILABLE is applied
	// whole or not at all: one whose statement had reached the stopped
	// server runs when the server continues, as on a real PostgreSQL —
	// that is what UNAVAILABLE on a write means (not known to be applied),
	// and why writes carry idempotency keys. So the ledger adds up, and a
	// client retrying each unanswered deduction, as many times as it likes,
	// has it applied exactly once.
	u, err := in.Store.GetUserByClerkIDIncludingDeleted(ctx, clerkID)
	if err != nil {
		t.Fatal(err)
	}
	ledger, err := in.Store.ListCreditTransactions(ctx, u.ID, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	landed := 0
	for _, tx := range ledger {
		if strings.HasPrefix(tx.IdempotencyKey, "frozen-") {
			landed++
		}
	}
	t.Logf("deductions tried during the freeze that the server ran at the thaw: %d of 4", landed)
	checkLedgers(t, in, []string{clerkID}, acks)
	for _, key := range []string{"frozen-rest-0", "frozen-rest-1", "frozen-grpc-0", "frozen-grpc-1"} {
		var first *userdv1.CreditTransaction
		for range 2 {
			r, err := in.Client.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: clerkID, Amount: 1, IdempotencyKey: key})
			if err != nil {
				t.Fatalf("retry of %s after the thaw: %v", key, err)
			}
			if first == nil {
				first = r.GetTransaction()
				acks = append(acks, acknowledged{clerkID, first})
			} else if r.GetTransaction().GetId() != first.GetId() {
				t.Errorf("retry of %s applied it again: %v after %v", key, r.GetTransaction(), first)
			}
		}
	}
	checkLedgers(t, in, []string{clerkID}, acks)
	u, _ = in.Store.GetUserByClerkIDIncludingDeleted(ctx, clerkID)
	if want := int64(10 + 100 - 6); u.Credits != want {
		t.Errorf("balance %d after six deductions of 1 from 110, want %d", u.Credits, want)
	}
	// Svix redelivers what was answered 503; each delivery applies once.
	for round := range 2 {
		id := "user_frozen_hook_" + strconv.Itoa(round)
		code, body := deliver(in, "msg_frozen_"+strconv.Itoa(round), id)
		if code != http.StatusOK || !(strings.Contains(body, `"created"`) || strings.Contains(body, `"duplicate"`)) {
			t.Errorf("redelivery of the round %d webhook: %d %s, want 200 created or duplicate", round, code, body)
		}
		if _, err := in.Store.GetLiveUserByClerkID(ctx, id); err != nil {
			t.Errorf("%s after its redelivery: %v", id, err)
		}
	}
}

// TestClientDeadlineWins: with the database frozen and the server's bound
// at its 10 s default, a call whose client allows 300 ms is ended by the
// server at the client's deadline, not its own: over gRPC (the server
// records the call as answered long before its bound) and over REST, where
// the deadline comes in a Grpc-Timeout header.
func TestClientDeadlineWins(t *testing.T) {
	t.Parallel()
	in, proxy := apptest.StartBehindProxy(t, nil)
	const bound = 10 * time.Second
	if got := in.App.RequestTimeout(); got != bound {
		t.Fatalf("request bound %s, want the default %s", got, bound)
	}
	ctx := context.Background()
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_hurried"}); err != nil {
		t.Fatal(err)
	}
	proxy.Freeze()

	start := time.Now()
	callCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := in.Client.GetUser(callCtx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_hurried"}})
	cancel()
	// The server's UNAVAILABLE may arrive before the client's own timer
	// fires: the deadline it received is the client's, less the transit.
	if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Unavailable {
		t.Errorf("gRPC GetUser with a 300ms deadline: %v, want DEADLINE_EXCEEDED or UNAVAILABLE", err)
	}
	// The client gives up by itself; the server must too.
	for handled(t, in, "GetUser") == 0 {
		if time.Since(start) > bound/2 {
			t.Fatalf("the server was still working on the call %s after the client's 300ms deadline", time.Since(start))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("gRPC: the server ended a call with a 300ms deadline within %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	code, body := restCall(in, "GET", "/v1/users/user_hurried", nil, "Grpc-Timeout", "300m")
	took := time.Since(start)
	t.Logf("REST with Grpc-Timeout 300m: %d in %s", code, took.Round(time.Millisecond))
	if code != http.StatusServiceUnavailable && code != http.StatusGatewayTimeout {
		t.Errorf("REST GET with Grpc-Timeout 300m: %d %s, want 503/504", code, body)
	}
	if took > bound/2 {
		t.Errorf("REST GET with Grpc-Timeout 300m took %s: the server waited for its own %s bound", took, bound)
	}
}

// restCall makes a REST call as the test service, with extra header pairs,
// and returns the status and body. No client timeout: the server must end
// the call (the tests guard against hangs themselves).
func restCall(in *apptest.Instance, method, path string, body any, headers ...string) (int, string) {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, in.HTTPURL+path, rd)
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Authorization", "Bearer "+apptest.ServiceToken)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(raw))
}

// deliver posts a signed user.created for clerkID as Svix would.
func deliver(in *apptest.Instance, msgID, clerkID string) (int, string) {
	body := clerkhook.SampleEvent("user.created", clerkhook.SampleUser{ID: clerkID, UpdatedAt: time.Now()})
	h, err := clerkhook.SignHeaders(apptest.WebhookSecret, msgID, time.Now(), body)
	if err != nil {
		return 0, err.Error()
	}
	req, err := http.NewRequest("POST", in.WebhookURL, bytes.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(raw))
}

// handled reads from /metrics how many calls of method the server has
// answered, with any code (a call whose client gave up ends UNAVAILABLE or
// CANCELLED, depending on whether the server's timer or the client's
// cancellation arrives first).
func handled(t *testing.T, in *apptest.Instance, method string) float64 {
	t.Helper()
	resp, err := http.Get(in.OpsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	var n float64
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "grpc_server_handled_total{") && strings.Contains(line, `grpc_method="`+method+`"`) {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			n += v
		}
	}
	return n
}
