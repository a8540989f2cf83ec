package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/procstat"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/testwait"
)

// e2eWebhookSecret is the signing secret startUserd configures.
const e2eWebhookSecret = "whsec_dXNlcmQtZTJlLXdlYmhvb2stc2VjcmV0LTAx"

// TestCrashKeepsAcknowledgedWrites kills userd with SIGKILL in the middle of
// a write load (credit changes over gRPC and signed user.created deliveries,
// which are group-committed) and starts it again: every write it
// acknowledged is there and the books balance.
func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	bin := buildUserd(t)
	dbURL := testdb.URL(t)
	ep := newEndpoints(t)
	p := startUserd(t, bin, dbURL, t.TempDir(), ep)
	c, ctx := client(t, ep.GRPC)
	ids := []string{"user_crash0", "user_crash1", "user_crash2", "user_crash3"}
	for _, id := range ids {
		if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: id}); err != nil {
			t.Fatal(err)
		}
	}
	type ack struct {
		id string
		tx *userdv1.CreditTransaction
	}
	var (
		mu   sync.Mutex
		acks []ack
		seq  atomic.Int64
		wg   sync.WaitGroup
	)
	for w := range 12 {
		wg.Go(func() {
			for {
				id := ids[w%len(ids)]
				key := fmt.Sprintf("crash-%d", seq.Add(1))
				callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
				var (
					tx  *userdv1.CreditTransaction
					err error
				)
				if w%2 == 0 {
					var r *userdv1.GrantCreditsResponse
					r, err = c.GrantCredits(callCtx, &userdv1.GrantCreditsRequest{ClerkUserId: id, Amount: 2, IdempotencyKey: key})
					tx = r.GetTransaction()
				} else {
					var r *userdv1.DeductCreditsResponse
					r, err = c.DeductCredits(callCtx, &userdv1.DeductCreditsRequest{ClerkUserId: id, Amount: 1, IdempotencyKey: key})
					tx = r.GetTransaction()
				}
				cancel()
				switch status.Code(err) {
				case codes.OK:
					mu.Lock()
					acks = append(acks, ack{id, tx})
					mu.Unlock()
				case codes.FailedPrecondition:
				default:
					return // userd is gone
				}
			}
		})
	}
	// Webhook senders: each delivery creates a new user; a 200 is an
	// acknowledgement that the user is committed.
	var (
		hookAcks []string
		hookSeq  atomic.Int64
	)
	for range 8 {
		wg.Go(func() {
			httpc := &http.Client{Timeout: 3 * time.Second}
			for {
				id := fmt.Sprintf("user_crashhook%d", hookSeq.Add(1))
				body := clerkhook.SampleEvent("user.created", clerkhook.SampleUser{ID: id, Email: id + "@example.com", UpdatedAt: time.Now()})
				h, err := clerkhook.SignHeaders(e2eWebhookSecret, "msg_"+id, time.Now(), body)
				if err != nil {
					t.Error(err)
					return
				}
				req, _ := http.NewRequest(http.MethodPost, "http://"+ep.Webhook+clerkhook.Path, bytes.NewReader(body))
				req.Header = h
				resp, err := httpc.Do(req)
				if err != nil {
					return // userd is gone
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					mu.Lock()
					hookAcks = append(hookAcks, id)
					mu.Unlock()
				}
			}
		})
	}
	// The crash comes mid-load: once both kinds of write have been
	// acknowledged a good number of times.
	testwait.Until(t, 2*time.Minute, "acknowledged writes and deliveries", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acks) >= 200 && len(hookAcks) >= 50
	})
	p.kill(t)
	wg.Wait()
	if len(acks) == 0 || len(hookAcks) == 0 {
		t.Fatalf("%d writes and %d deliveries acknowledged before the crash, want some of each", len(acks), len(hookAcks))
	}

	startUserd(t, bin, dbURL, t.TempDir(), ep)
	st := store.New(testdb.Connect(t, dbURL), store.Options{})
	found := map[int64]bool{}
	for _, id := range ids {
		u, err := st.GetLiveUserByClerkID(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		ts, err := st.ListCreditTransactions(context.Background(), u.ID, 0, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for i := len(ts) - 1; i >= 0; i-- {
			sum += ts[i].Delta
			if ts[i].BalanceAfter != sum || sum < 0 {
				t.Errorf("%s: entry %d balance_after %d, running sum %d", id, ts[i].ID, ts[i].BalanceAfter, sum)
			}
			found[ts[i].ID] = true
		}
		if sum != u.Credits {
			t.Errorf("%s: credits %d, ledger %d", id, u.Credits, sum)
		}
	}
	for _, a := range acks {
		if !found[a.tx.GetId()] {
			t.Errorf("acknowledged transaction %d of %s is lost", a.tx.GetId(), a.id)
		}
	}
	for _, id := range hookAcks {
		if _, err := st.GetLiveUserByClerkID(context.Background(), id); err != nil {
			t.Errorf("acknowledged user.created of %s is lost: %v", id, err)
		}
	}
	t.Logf("%d writes and %d webhook deliveries acknowledged before SIGKILL; all present after the restart", len(acks), len(hookAcks))
}

// TestAbusiveClients: slow headers, huge bodies, thousands of idle
// connections and oversized gRPC messages neither bring userd down nor
// stop it serving others, and its memory stays bounded.
func TestAbusiveClients(t *testing.T) {
	bin := buildUserd(t)
	ep := newEndpoints(t)
	p := startUserd(t, bin, testdb.URL(t), t.TempDir(), ep)
	c, ctx := client(t, ep.GRPC)
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_victim"}); err != nil {
		t.Fatal(err)
	}
	baseline := procstat.RSSMiB(p.Pid())
	served := func(what string) {
		t.Helper()
		callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if _, err := c.GetUser(callCtx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_victim"}}); err != nil {
			t.Errorf("gRPC client not served %s: %v", what, err)
		}
		req, _ := http.NewRequestWithContext(callCtx, "GET", "http://"+ep.HTTP+"/v1/users/user_victim", nil)
		req.Header.Set("Authorization", "Bearer "+e2eToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("REST client not served %s: %v %v", what, resp, err)
		} else {
			resp.Body.Close()
		}
	}

	// Thousands of idle connections on every listener.
	var idle []net.Conn
	for _, addr := range []string{ep.GRPC, ep.HTTP, ep.Webhook} {
		for range 1000 {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatalf("dial %s: %v", addr, err)
			}
			idle = append(idle, conn)
		}
	}
	served("with 3000 idle connections open")

	// Slow headers: a byte every 500 ms; the server must hang up.
	var slowClosed, slowDialed atomic.Int32
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			conn, err := net.Dial("tcp", ep.HTTP)
			if err != nil {
				return
			}
			slowDialed.Add(1)
			defer conn.Close()
			_, _ = conn.Write([]byte("GET /v1/users/user_victim HTTP/1.1\r\nHost: x\r\n"))
			for range 30 { // up to 15 s
				if _, err := conn.Write([]byte("X")); err != nil {
					slowClosed.Add(1)
					return
				}
				_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				// Before our headers end, any answer (a 408) or a close
				// means the server gave up on us.
				if n, err := conn.Read(make([]byte, 512)); n > 0 || err != nil && !isTimeout(err) {
					slowClosed.Add(1)
					return
				}
			}
		})
	}
	served("while 100 clients trickle headers")

	// Huge bodies, declared and chunked.
	huge := bytes.Repeat([]byte("x"), 20<<20)
	for _, chunked := range []bool{false, true} {
		var body io.Reader = bytes.NewReader(huge)
		if chunked {
			body = io.MultiReader(bytes.NewReader(huge)) // unknown length: sent chunked
		}
		req, _ := http.NewRequest("POST", "http://"+ep.HTTP+"/v1/users/user_victim/credits:deduct", body)
		req.Header.Set("Authorization", "Bearer "+e2eToken)
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 400 || resp.StatusCode >= 500 {
				t.Errorf("20 MiB body (chunked %v): %d, want a 4xx", chunked, resp.StatusCode)
			}
		}
		if time.Since(start) > 10*time.Second {
			t.Errorf("20 MiB body (chunked %v) took %s", chunked, time.Since(start))
		}
	}

	// An oversized gRPC message.
	_, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_victim", Amount: 1, IdempotencyKey: "k",
		Reason: strings.Repeat("r", 2<<20)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("2 MiB gRPC message: %v, want RESOURCE_EXHAUSTED", err)
	}

	wg.Wait()
	if closed, dialed := slowClosed.Load(), slowDialed.Load(); closed < dialed || dialed < 90 {
		t.Errorf("%d of %d slow-header connections were cut (of 100 tried)", closed, dialed)
	}
	served("after the abuse")
	peak := procstat.RSSMiB(p.Pid())
	for _, conn := range idle {
		conn.Close()
	}
	t.Logf("RSS %.0f MiB before, %.0f MiB with 3000 idle connections and the abuse", baseline, peak)
	if peak > baseline+150 {
		t.Errorf("RSS grew from %.0f to %.0f MiB", baseline, peak)
	}
	if err := p.Cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("userd died: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
