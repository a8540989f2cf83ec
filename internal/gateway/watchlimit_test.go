package gateway_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/config"
)

// status429 waits for the response of a refused watch and checks it: 429,
// Retry-After, RESOURCE_EXHAUSTED with a RetryInfo.
func (s *ndjson) refused(t *testing.T, what string) {
	t.Helper()
	if s.resp.StatusCode != http.StatusTooManyRequests || s.resp.Header.Get("Retry-After") != "10" {
		t.Fatalf("%s: %d Retry-After %q, want 429 with Retry-After 10", what, s.resp.StatusCode, s.resp.Header.Get("Retry-After"))
	}
	select {
	case m := <-s.lines:
		details, _ := m["details"].([]any)
		retry := false
		for _, d := range details {
			if dm, _ := d.(map[string]any); dm["@type"] == "type.googleapis.com/google.rpc.RetryInfo" && dm["retryDelay"] == "10s" {
				retry = true
			}
		}
		if m["code"] != float64(codes.ResourceExhausted) || !retry {
			t.Errorf("%s: body %v, want code 8 with a RetryInfo of 10s", what, m)
		}
	case err := <-s.done:
		t.Fatalf("%s: no body: %v", what, err)
	}
}

// TestWatchLimits: issue 18's per-caller flood of watch streams. An end
// user's third REST stream is refused (429, Retry-After) while its two are
// open; another user is unaffected; the server-wide bound refuses a
// service over gRPC (RESOURCE_EXHAUSTED, RetryInfo); closing one stream
// admits another.
func TestWatchLimits(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *config.Serve, _ *clerktest.Clerk) {
		c.FeedMaxWatchesPerUser, c.FeedMaxWatches = 2, 3
	})
	alice, bob := b.clerk.UserToken("user_alice"), b.clerk.UserToken("user_bob")
	for _, tok := range []string{alice, bob} {
		if r := b.call(t, "POST", "/v1/users/me:ensure", tok, nil); r.status != http.StatusOK {
			t.Fatalf("ensure: %d %v", r.status, r.body)
		}
	}
	const path = "/v1/users/me/events:watch"
	first := b.openWatch(t, path, alice)
	first.next(t, "heartbeat")
	b.openWatch(t, path, alice).next(t, "heartbeat")
	b.openWatch(t, path, alice).refused(t, "alice's third stream")
	b.openWatch(t, path, bob).next(t, "heartbeat")

	// Three streams open: the server is full, for a service too.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := b.in.Client.WatchUserEvents(ctx, &userdv1.WatchUserEventsRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	st := status.Convert(err)
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			retry = ri
		}
	}
	if st.Code() != codes.ResourceExhausted || retry.GetRetryDelay().AsDuration() != 10*time.Second {
		t.Errorf("a service's stream on a full server: %v (retry %v), want RESOURCE_EXHAUSTED with RetryInfo 10s", err, retry)
	}

	// Alice closes one: she is admitted again once userd has seen it go.
	first.resp.Body.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := b.openWatch(t, path, alice)
		if s.resp.StatusCode == http.StatusOK {
			s.next(t, "heartbeat")
			break
		}
		s.refused(t, "alice's stream while her closed one is being released")
		if time.Now().After(deadline) {
			t.Fatal("alice's closed stream was not released within 30 s")
		}
		time.Sleep(50 * time.Millisecond) // polling for the release: the condition, not a duration
	}
}

// TestWatchEndsWithTheSessionToken: issue 18's revoked session that kept a
// live feed. An end user's stream, gRPC or REST, ends when its session
// token expires (plus the leeway): UNAUTHENTICATED over gRPC, an error line
// over REST.
func TestWatchEndsWithTheSessionToken(t *testing.T) {
	t.Parallel()
	const leeway = time.Second
	b := setup(t, func(c *config.Serve, _ *clerktest.Clerk) { c.JWTLeeway = leeway })
	if r := b.call(t, "POST", "/v1/users/me:ensure", b.clerk.UserToken("user_alice"), nil); r.status != http.StatusOK {
		t.Fatalf("ensure: %d %v", r.status, r.body)
	}
	shortToken := func() (string, time.Time) {
		claims := b.clerk.Claims("user_alice")
		exp := time.Now().Add(3 * time.Second).Truncate(time.Second)
		claims["exp"] = exp.Unix()
		return b.clerk.Token(claims, "kid-1"), exp
	}

	t.Run("REST", func(t *testing.T) {
		t.Parallel()
		tok, exp := shortToken()
		s := b.openWatch(t, "/v1/users/me/events:watch", tok)
		s.next(t, "heartbeat")
		outlived := time.After(time.Minute)
		for {
			select {
			case m := <-s.lines:
				if m["error"] == nil {
					continue
				}
				if now := time.Now(); now.Before(exp.Add(leeway)) {
					t.Errorf("the stream ended at %s, before exp + leeway %s", now, exp.Add(leeway))
				}
				if code := field(m, "error", "code"); code != float64(codes.Unauthenticated) {
					t.Errorf("last line %v, want an error with code 16 (UNAUTHENTICATED)", m)
				}
				if err := <-s.done; err != nil {
					t.Errorf("after the error line: %v, want the stream closed", err)
				}
				return
			case err := <-s.done:
				t.Fatalf("the stream closed without an error line: %v", err)
			case <-outlived:
				t.Fatal("the stream outlived its token by a minute")
			}
		}
	})

	t.Run("gRPC", func(t *testing.T) {
		t.Parallel()
		tok, exp := shortToken()
		conn, err := grpc.NewClient(b.in.App.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(withToken(tok), time.Minute)
		defer cancel()
		stream, err := userdv1.NewUserServiceClient(conn).WatchUserEvents(ctx, &userdv1.WatchUserEventsRequest{ClerkUserId: "me"})
		if err != nil {
			t.Fatal(err)
		}
		if first, err := stream.Recv(); err != nil || first.GetHeartbeat() == nil {
			t.Fatalf("first message %v, %v; want a heartbeat", first, err)
		}
		for {
			if _, err = stream.Recv(); err != nil {
				break
			}
		}
		if now := time.Now(); now.Before(exp.Add(leeway)) {
			t.Errorf("the stream ended at %s, before exp + leeway %s", now, exp.Add(leeway))
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("the stream ended with %v, want UNAUTHENTICATED", err)
		}
	})
}
