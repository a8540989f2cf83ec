package clerkhook_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
)

// TestDatabaseOutage cuts userd's database connections: deliveries are
// answered 5xx (so Svix retries them) within their deadline, and the same
// delivery is applied once the database is back.
func TestDatabaseOutage(t *testing.T) {
	t.Parallel()
	in, proxy := apptest.StartBehindProxy(t, nil)

	before := newDelivery("msg_before", "user.created", clerkhook.SampleUser{ID: "user_before", UpdatedAt: at(1)})
	if code, out := post(t, in, before); code != http.StatusOK {
		t.Fatalf("before the outage: %d %v", code, out)
	}

	proxy.Cut()
	during := newDelivery("msg_during", "user.created", clerkhook.SampleUser{ID: "user_during", Email: "during@example.com", UpdatedAt: at(2)})
	for i := range 3 {
		start := time.Now()
		code, out := post(t, in, during)
		if code != http.StatusServiceUnavailable {
			t.Errorf("attempt %d during the outage: %d %v, want 503", i, code, out)
		}
		if took := time.Since(start); took > 15*time.Second {
			t.Errorf("attempt %d took %s, beyond the handler's deadline", i, took)
		}
	}

	proxy.Restore()
	// The pool may still hold connections the cut broke; each is dropped
	// on first use, so a few retries (as Svix makes) must succeed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		during.sentAt = time.Now()
		code, out := post(t, in, during)
		if code == http.StatusOK {
			if out["status"] != "created" {
				t.Errorf("after the outage: %v, want created", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d %v 10s after the database came back", code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	u, err := in.Store.GetLiveUserByClerkID(context.Background(), "user_during")
	if err != nil || u.Email != "during@example.com" || u.Credits != 10 {
		t.Errorf("user_during = %+v, %v", u, err)
	}
}
