package clerkhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/httpmw"
	"github.com/userd/userd/internal/telemetry"
	"github.com/userd/userd/internal/users"
)

var client = &http.Client{Timeout: 30 * time.Second}

// delivery is one webhook request as Svix would send it.
type delivery struct {
	msgID  string
	body   []byte
	secret string
	sentAt time.Time
	// session marks a session.* event (embedding its user).
	session bool
}

func newDelivery(msgID, typ string, u clerkhook.SampleUser) delivery {
	return delivery{msgID: msgID, body: clerkhook.SampleEvent(typ, u), secret: apptest.WebhookSecret, sentAt: time.Now()}
}

// newSessionDelivery is a session.* event embedding u as the session's user.
func newSessionDelivery(msgID, typ string, u clerkhook.SampleUser) delivery {
	return delivery{msgID: msgID, body: clerkhook.SampleSessionEvent(typ, u, true), secret: apptest.WebhookSecret,
		sentAt: time.Now(), session: true}
}

func (d delivery) request(t testing.TB, url string) *http.Request {
	t.Helper()
	h, err := clerkhook.SignHeaders(d.secret, d.msgID, d.sentAt, d.body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(d.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	return req
}

// send posts req and returns the status and the decoded JSON answer.
func send(t testing.TB, req *http.Request) (int, map[string]string) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", req.URL, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]string
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func post(t testing.TB, in *apptest.Instance, d delivery) (int, map[string]string) {
	t.Helper()
	return send(t, d.request(t, in.WebhookURL))
}

func getUser(t *testing.T, in *apptest.Instance, clerkID string) (*userdv1.User, error) {
	t.Helper()
	resp, err := in.Client.GetUser(context.Background(), &userdv1.GetUserRequest{
		Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: clerkID},
	})
	return resp.GetUser(), err
}

func ledgerOf(t *testing.T, in *apptest.Instance, clerkID string) []users.Transaction {
	t.Helper()
	u, err := in.Store.GetUserByClerkIDIncludingDeleted(context.Background(), clerkID)
	if err != nil {
		t.Fatalf("user %s: %v", clerkID, err)
	}
	ts, err := in.Store.ListCreditTransactions(context.Background(), u.ID, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

var t0 = time.Now().Add(-time.Hour).Truncate(time.Millisecond)

func at(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }

func TestUserLifecycle(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	const id = "user_2hZkA7sFq4TnLw9PcXe1VbM0rYu"

	status1, out := post(t, in, newDelivery("msg_1", "user.created", clerkhook.SampleUser{
		ID: id, Email: "ada@example.com", FirstName: "Ada", LastName: "Lovelace",
		ImageURL: "https://img.clerk.com/ada", UpdatedAt: at(1),
	}))
	if status1 != http.StatusOK || out["status"] != "created" {
		t.Fatalf("user.created: %d %v", status1, out)
	}
	u, err := getUser(t, in, id)
	if err != nil {
		t.Fatal(err)
	}
	// The primary email is found by id, not taken from the list's head.
	if u.GetEmail() != "ada@example.com" || u.GetFirstName() != "Ada" || u.GetLastName() != "Lovelace" ||
		u.GetImageUrl() != "https://img.clerk.com/ada" || u.GetCredits() != 10 || u.GetPlan() != userdv1.Plan_PLAN_FREE {
		t.Errorf("after user.created: %v", u)
	}

	code, out := post(t, in, newDelivery("msg_2", "user.updated", clerkhook.SampleUser{
		ID: id, Email: "ada@analytical.engine", FirstName: "Ada", LastName: "King", UpdatedAt: at(2),
	}))
	if code != http.StatusOK || out["status"] != "updated" {
		t.Fatalf("user.updated: %d %v", code, out)
	}
	u, _ = getUser(t, in, id)
	if u.GetEmail() != "ada@analytical.engine" || u.GetLastName() != "King" || u.GetImageUrl() != "" || u.GetCredits() != 10 {
		t.Errorf("after user.updated: %v", u)
	}

	// A user with no email (phone sign-up) is stored without one.
	code, _ = post(t, in, newDelivery("msg_3", "user.updated", clerkhook.SampleUser{ID: id, FirstName: "Ada", UpdatedAt: at(3)}))
	if u, _ = getUser(t, in, id); code != http.StatusOK || u.GetEmail() != "" {
		t.Errorf("after removing the email: %d %v", code, u)
	}

	code, out = post(t, in, newDelivery("msg_4", "user.deleted", clerkhook.SampleUser{ID: id}))
	if code != http.StatusOK || out["status"] != "deleted" {
		t.Fatalf("user.deleted: %d %v", code, out)
	}
	if _, err := getUser(t, in, id); status.Code(err) != codes.NotFound {
		t.Errorf("GetUser after delete: %v, want NotFound", err)
	}
	if ts := ledgerOf(t, in, id); len(ts) != 1 || ts[0].Delta != 10 {
		t.Errorf("ledger after delete = %+v, want the initial entry kept", ts)
	}

	// No later event resurrects the user.
	for i, typ := range []string{"user.updated", "user.created"} {
		code, out := post(t, in, newDelivery(fmt.Sprintf("msg_late_%d", i), typ, clerkhook.SampleUser{ID: id, Email: "ada@example.com", UpdatedAt: at(10)}))
		if code != http.StatusOK || out["status"] != "ignored_deleted" {
			t.Errorf("late %s: %d %v", typ, code, out)
		}
	}
	if _, err := getUser(t, in, id); status.Code(err) != codes.NotFound {
		t.Errorf("GetUser after late events: %v, want NotFound", err)
	}
	if _, err := in.Client.EnsureUser(context.Background(), &userdv1.EnsureUserRequest{ClerkUserId: id}); status.Code(err) != codes.NotFound {
		t.Errorf("EnsureUser of a deleted user: %v, want NotFound", err)
	}
}

func TestOtherEventTypesAreAcknowledged(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	body := []byte(`{"type":"session.created","object":"event","timestamp":1718003521334,"instance_id":"ins_1",` +
		`"data":{"id":"sess_1","user_id":"user_1","status":"active"}}`)
	code, out := post(t, in, delivery{msgID: "msg_session", body: body, secret: apptest.WebhookSecret, sentAt: time.Now()})
	if code != http.StatusOK || out["status"] != "ignored" {
		t.Errorf("session.created: %d %v", code, out)
	}
}

// TestSessionEventsSelfHeal: a session.* event embeds the session's user,
// applied through the same versioned path as user events: a user whose
// user.created was lost appears at its next sign-in — exactly once however
// many sessions start at once — and an older embedded state never
// overwrites a newer one nor revives a deleted user.
func TestSessionEventsSelfHeal(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	ada := clerkhook.SampleUser{ID: "user_sess", Email: "ada@example.com", FirstName: "Ada", LastName: "Lovelace", UpdatedAt: at(2)}
	const n = 50
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		outcomes = map[string]int{}
	)
	for i := range n {
		wg.Go(func() {
			body := clerkhook.SampleSessionEvent("session.created", ada, true)
			code, out := post(t, in, delivery{msgID: fmt.Sprintf("msg_sess_%d", i), body: body, secret: apptest.WebhookSecret, sentAt: time.Now()})
			mu.Lock()
			defer mu.Unlock()
			outcomes[fmt.Sprint(code, " ", out["status"])]++
		})
	}
	wg.Wait()
	if outcomes["200 created"] != 1 || outcomes["200 stale"] != n-1 {
		t.Errorf("outcomes %v, want one created and %d stale", outcomes, n-1)
	}
	u, err := getUser(t, in, ada.ID)
	if err != nil || u.GetEmail() != ada.Email || u.GetFirstName() != "Ada" || u.GetCredits() != 10 {
		t.Fatalf("user = %v, %v", u, err)
	}
	if ts := ledgerOf(t, in, ada.ID); len(ts) != 1 {
		t.Errorf("ledger has %d rows, want 1", len(ts))
	}

	// A newer state arrives; a session event embedding an older one is stale.
	newer := ada
	newer.LastName, newer.UpdatedAt = "King", at(3)
	if code, out := post(t, in, newDelivery("msg_upd", "user.updated", newer)); code != http.StatusOK || out["status"] != "updated" {
		t.Fatalf("user.updated: %d %v", code, out)
	}
	older := ada
	older.LastName = "Byron"
	for _, typ := range []string{"session.ended", "session.removed", "session.revoked", "session.pending"} {
		body := clerkhook.SampleSessionEvent(typ, older, true)
		if code, out := post(t, in, delivery{msgID: "msg_old_" + typ, body: body, secret: apptest.WebhookSecret, sentAt: time.Now()}); code != http.StatusOK || out["status"] != "stale" {
			t.Errorf("%s with an older user: %d %v", typ, code, out)
		}
	}
	if u, _ := getUser(t, in, ada.ID); u.GetLastName() != "King" {
		t.Errorf("last name %q, want King", u.GetLastName())
	}

	// Deleted: a later session event cannot bring the user back.
	if code, out := post(t, in, newDelivery("msg_del", "user.deleted", ada)); code != http.StatusOK || out["status"] != "deleted" {
		t.Fatalf("user.deleted: %d %v", code, out)
	}
	late := ada
	late.UpdatedAt = at(9)
	body := clerkhook.SampleSessionEvent("session.removed", late, true)
	if code, out := post(t, in, delivery{msgID: "msg_late", body: body, secret: apptest.WebhookSecret, sentAt: time.Now()}); code != http.StatusOK || out["status"] != "ignored_deleted" {
		t.Errorf("session.removed after user.deleted: %d %v", code, out)
	}

	// Without an embedded user: acknowledged, nothing created.
	body = clerkhook.SampleSessionEvent("session.created", clerkhook.SampleUser{ID: "user_nouser", UpdatedAt: at(1)}, false)
	if code, out := post(t, in, delivery{msgID: "msg_nouser", body: body, secret: apptest.WebhookSecret, sentAt: time.Now()}); code != http.StatusOK || out["status"] != "ignored" {
		t.Errorf("session.created without a user: %d %v", code, out)
	}
	if _, err := in.Store.GetUserByClerkIDIncludingDeleted(context.Background(), "user_nouser"); !errors.Is(err, users.ErrNoRow) {
		t.Errorf("a session without a user created one: %v", err)
	}
	// A session of one user embedding another is never applied.
	mixed := strings.Replace(string(clerkhook.SampleSessionEvent("session.created", clerkhook.SampleUser{ID: "user_mix", UpdatedAt: at(1)}, true)),
		`"user_id":"user_mix"`, `"user_id":"user_other"`, 1)
	if code, out := post(t, in, delivery{msgID: "msg_mixed", body: []byte(mixed), secret: apptest.WebhookSecret, sentAt: time.Now()}); code != http.StatusBadRequest || out["error"] != "bad_payload" {
		t.Errorf("session with a mismatched user: %d %v", code, out)
	}
}

func TestSecretRotation(t *testing.T) {
	t.Parallel()
	const newSecret = "whsec_bmV3LXNlY3JldC1hZnRlci1yb3RhdGlvbi0wMg=="
	in := apptest.Start(t, func(c *config.Serve) { c.WebhookSecret = apptest.WebhookSecret + ", " + newSecret })
	for i, secret := range []string{apptest.WebhookSecret, newSecret} {
		d := newDelivery(fmt.Sprintf("msg_rot_%d", i), "user.created", clerkhook.SampleUser{ID: fmt.Sprintf("user_rot%d", i), UpdatedAt: at(1)})
		d.secret = secret
		if code, out := post(t, in, d); code != http.StatusOK {
			t.Errorf("secret #%d: %d %v", i+1, code, out)
		}
	}
	// Svix signs with every active secret during a rotation; any may match.
	d := newDelivery("msg_rot_both", "user.created", clerkhook.SampleUser{ID: "user_rotboth", UpdatedAt: at(1)})
	req := d.request(t, in.WebhookURL)
	other, _ := clerkhook.SignHeaders("whsec_"+"b3RoZXItc2VjcmV0LW5vdC1jb25maWd1cmVk", d.msgID, d.sentAt, d.body)
	req.Header.Set("svix-signature", other.Get("svix-signature")+" "+req.Header.Get("svix-signature"))
	if code, out := send(t, req); code != http.StatusOK {
		t.Errorf("several signatures: %d %v", code, out)
	}
}

// TestRejections: every delivery that fails verification is answered 4xx
// with its own reason before any database work, and nothing is stored.
func TestRejections(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	const id = "user_rejected"
	good := func() delivery {
		return newDelivery("msg_rej", "user.created", clerkhook.SampleUser{ID: id, Email: "r@example.com", UpdatedAt: at(1)})
	}
	cases := []struct {
		name   string
		req    func() *http.Request
		status int
		reason string
	}{
		{"NoSvixID", func() *http.Request { r := good().request(t, in.WebhookURL); r.Header.Del("svix-id"); return r }, 400, "missing_headers"},
		{"NoTimestamp", func() *http.Request {
			r := good().request(t, in.WebhookURL)
			r.Header.Del("svix-timestamp")
			return r
		}, 400, "missing_headers"},
		{"NoSignature", func() *http.Request {
			r := good().request(t, in.WebhookURL)
			r.Header.Del("svix-signature")
			return r
		}, 400, "missing_headers"},
		{"MalformedTimestamp", func() *http.Request {
			r := good().request(t, in.WebhookURL)
			r.Header.Set("svix-timestamp", "yesterday")
			return r
		}, 400, "malformed_timestamp"},
		{"WrongSecret", func() *http.Request {
			d := good()
			d.secret = "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="
			return d.request(t, in.WebhookURL)
		}, 401, "bad_signature"},
		{"TamperedBody", func() *http.Request {
			d := good()
			r := d.request(t, in.WebhookURL)
			tampered := bytes.Replace(d.body, []byte("r@example.com"), []byte("x@example.com"), 1)
			r.Body = io.NopCloser(bytes.NewReader(tampered))
			return r
		}, 401, "bad_signature"},
		{"OtherMessageID", func() *http.Request {
			r := good().request(t, in.WebhookURL)
			r.Header.Set("svix-id", "msg_other")
			return r
		}, 401, "bad_signature"},
		{"SignatureWithoutVersion", func() *http.Request {
			r := good().request(t, in.WebhookURL)
			r.Header.Set("svix-signature", strings.TrimPrefix(r.Header.Get("svix-signature"), "v1,"))
			return r
		}, 401, "bad_signature"},
		{"ReplayedOld", func() *http.Request {
			d := good()
			d.sentAt = time.Now().Add(-6 * time.Minute)
			return d.request(t, in.WebhookURL)
		}, 400, "timestamp_out_of_tolerance"},
		{"FromTheFuture", func() *http.Request {
			d := good()
			d.sentAt = time.Now().Add(6 * time.Minute)
			return d.request(t, in.WebhookURL)
		}, 400, "timestamp_out_of_tolerance"},
		{"ReplayWithForgedSvixHeaders", func() *http.Request {
			// A captured delivery's signature moved to webhook-* headers,
			// with a fresh svix-timestamp and a new svix-id beside it.
			d := good()
			d.sentAt = time.Now().Add(-72 * time.Hour)
			r := d.request(t, in.WebhookURL)
			for _, n := range []string{"id", "timestamp", "signature"} {
				r.Header.Set("webhook-"+n, r.Header.Get("svix-"+n))
			}
			r.Header.Del("svix-signature")
			r.Header.Set("svix-id", "msg_forged")
			r.Header.Set("svix-timestamp", strconv.FormatInt(time.Now().Unix(), 10))
			return r
		}, 400, "timestamp_out_of_tolerance"},
		{"TooLargeDeclared", func() *http.Request {
			d := good()
			d.body = append(d.body, bytes.Repeat([]byte(" "), httpmw.MaxBodyBytes)...)
			return d.request(t, in.WebhookURL)
		}, 413, "body_too_large"},
		{"TooLargeChunked", func() *http.Request {
			d := good()
			d.body = append(d.body, bytes.Repeat([]byte(" "), httpmw.MaxBodyBytes)...)
			r := d.request(t, in.WebhookURL)
			r.ContentLength = -1 // sent chunked: the limit must hold while reading
			r.Body = io.NopCloser(bytes.NewReader(d.body))
			return r
		}, 413, "body_too_large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := send(t, tc.req())
			if code != tc.status || out["error"] != tc.reason {
				t.Errorf("got %d %v, want %d %s", code, out, tc.status, tc.reason)
			}
		})
	}
	t.Run("MethodNotAllowed", func(t *testing.T) {
		for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
			req, _ := http.NewRequest(m, in.WebhookURL, nil)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(resp.Header.Get("Allow"), "POST") {
				t.Errorf("%s: %d, Allow %q; want 405 with Allow: POST", m, resp.StatusCode, resp.Header.Get("Allow"))
			}
		}
	})
	t.Run("OtherPath", func(t *testing.T) {
		req := good().request(t, strings.TrimSuffix(in.WebhookURL, "/clerk")+"/other")
		if code, _ := send(t, req); code != http.StatusNotFound {
			t.Errorf("other path: %d, want 404", code)
		}
	})
	if _, err := in.Store.GetUserByClerkIDIncludingDeleted(context.Background(), id); !errors.Is(err, users.ErrNoRow) {
		t.Errorf("a rejected delivery stored the user (err %v)", err)
	}
	// The genuine delivery still goes through afterwards.
	if code, out := post(t, in, good()); code != http.StatusOK || out["status"] != "created" {
		t.Errorf("genuine delivery after rejections: %d %v", code, out)
	}
}

func TestNoSecretRejectsEverything(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, func(c *config.Serve) { c.WebhookSecret = "" })
	code, out := post(t, in, newDelivery("msg_nosecret", "user.created", clerkhook.SampleUser{ID: "user_nosecret", UpdatedAt: at(1)}))
	if code != http.StatusServiceUnavailable || out["error"] != "secret_not_configured" {
		t.Errorf("got %d %v, want 503 secret_not_configured", code, out)
	}
	if _, err := in.Store.GetUserByClerkIDIncludingDeleted(context.Background(), "user_nosecret"); !errors.Is(err, users.ErrNoRow) {
		t.Errorf("stored a user without a configured secret (err %v)", err)
	}
}

// TestInvalidPayloads: correctly signed but unusable payloads are answered
// 400 and change nothing.
func TestInvalidPayloads(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	sample := string(clerkhook.SampleEvent("user.created", clerkhook.SampleUser{ID: "user_valid", UpdatedAt: at(1)}))
	cases := []struct {
		name, body, reason string
	}{
		{"NotJSON", `{"type":"user.created",`, "bad_payload"},
		{"JSONArray", `[1,2,3]`, "bad_payload"},
		{"NotAnEvent", `{"type":"user.created","object":"user","data":{}}`, "bad_payload"},
		{"NoType", `{"object":"event","data":{}}`, "bad_payload"},
		{"DataNotAnObject", `{"type":"user.created","object":"event","data":"user_1"}`, "bad_payload"},
		{"WrongFieldType", `{"type":"user.updated","object":"event","data":{"id":"user_1","updated_at":"yesterday"}}`, "bad_payload"},
		{"NoUserID", strings.Replace(sample, `"id":"user_valid"`, `"id":""`, 1), "invalid_event"},
		{"NotAUserID", strings.Replace(sample, `"id":"user_valid"`, `"id":"org_2abc"`, 1), "invalid_event"},
		{"NoUpdatedAt", `{"type":"user.updated","object":"event","data":{"id":"user_valid"}}`, "invalid_event"},
		{"DeletedFalse", `{"type":"user.deleted","object":"event","data":{"id":"user_valid","deleted":false}}`, "bad_payload"},
		{"DeletedNoID", `{"type":"user.deleted","object":"event","data":{"deleted":true}}`, "invalid_event"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := delivery{msgID: fmt.Sprintf("msg_bad_%d", i), body: []byte(tc.body), secret: apptest.WebhookSecret, sentAt: time.Now()}
			code, out := post(t, in, d)
			if code != http.StatusBadRequest || out["error"] != tc.reason {
				t.Errorf("got %d %v, want 400 %s", code, out, tc.reason)
			}
		})
	}
	for _, id := range []string{"user_valid", "user_1"} {
		if _, err := in.Store.GetUserByClerkIDIncludingDeleted(context.Background(), id); !errors.Is(err, users.ErrNoRow) {
			t.Errorf("an invalid payload stored %s (err %v)", id, err)
		}
	}
}

func TestRedeliveryAppliesOnce(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	d := newDelivery("msg_dup", "user.created", clerkhook.SampleUser{ID: "user_dup", Email: "dup@example.com", UpdatedAt: at(1)})
	if code, out := post(t, in, d); code != http.StatusOK || out["status"] != "created" {
		t.Fatalf("first delivery: %d %v", code, out)
	}
	// A redelivery is acknowledged without being applied again — even one
	// whose user state would otherwise be newer (it is the same message).
	if code, out := post(t, in, d); code != http.StatusOK || out["status"] != "duplicate" {
		t.Errorf("redelivery: %d %v", code, out)
	}
}

// TestConcurrentRedeliveryOfCreate posts the same signed user.created 1000
// times at once: one user, 10 credits, one ledger row.
func TestConcurrentRedeliveryOfCreate(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	d := newDelivery("msg_storm", "user.created", clerkhook.SampleUser{ID: "user_storm", Email: "storm@example.com", UpdatedAt: at(1)})
	const n = 1000
	var (
		wg       sync.WaitGroup
		outcomes sync.Map
		failures atomic.Int32
	)
	sem := make(chan struct{}, 100) // at most 100 connections at once
	for range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			code, out := post(t, in, d)
			if code != http.StatusOK {
				failures.Add(1)
				return
			}
			c, _ := outcomes.LoadOrStore(out["status"], new(atomic.Int32))
			c.(*atomic.Int32).Add(1)
		})
	}
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Errorf("%d deliveries failed", f)
	}
	counts := map[string]int32{}
	outcomes.Range(func(k, v any) bool { counts[k.(string)] = v.(*atomic.Int32).Load(); return true })
	if counts["created"] != 1 || counts["duplicate"] != n-1 {
		t.Errorf("outcomes = %v, want 1 created and %d duplicate", counts, n-1)
	}
	u, err := getUser(t, in, "user_storm")
	if err != nil || u.GetCredits() != 10 {
		t.Errorf("user = %v, %v; want 10 credits", u, err)
	}
	if ts := ledgerOf(t, in, "user_storm"); len(ts) != 1 {
		t.Errorf("ledger has %d rows, want 1", len(ts))
	}
}

func TestOrderSafety(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	const id = "user_order"
	u := func(email, last string, n int) clerkhook.SampleUser {
		return clerkhook.SampleUser{ID: id, Email: email, FirstName: "O", LastName: last, UpdatedAt: at(n)}
	}
	steps := []struct {
		msgID, typ string
		user       clerkhook.SampleUser
		want       string
	}{
		// user.updated before user.created creates the user.
		{"m2", "user.updated", u("two@example.com", "Two", 2), "created"},
		// An older update changes nothing.
		{"m1", "user.updated", u("one@example.com", "One", 1), "stale"},
		// The late user.created changes nothing.
		{"m0", "user.created", u("zero@example.com", "Zero", 0), "stale"},
		{"m3", "user.updated", u("three@example.com", "Three", 3), "updated"},
		// The same state again (another message id) is stale too.
		{"m3b", "user.updated", u("three@example.com", "Three", 3), "stale"},
	}
	for _, s := range steps {
		code, out := post(t, in, newDelivery(s.msgID, s.typ, s.user))
		if code != http.StatusOK || out["status"] != s.want {
			t.Errorf("%s %s: %d %v, want %s", s.msgID, s.typ, code, out, s.want)
		}
	}
	got, err := getUser(t, in, id)
	if err != nil || got.GetEmail() != "three@example.com" || got.GetLastName() != "Three" || got.GetCredits() != 10 {
		t.Errorf("final user = %v, %v", got, err)
	}
	if ts := ledgerOf(t, in, id); len(ts) != 1 {
		t.Errorf("ledger has %d rows, want exactly the initial one", len(ts))
	}
	// A deletion that arrives before anything else leaves a tombstone that
	// the user's creation cannot undo.
	post(t, in, newDelivery("d1", "user.deleted", clerkhook.SampleUser{ID: "user_early_delete"}))
	code, out := post(t, in, newDelivery("c1", "user.created", clerkhook.SampleUser{ID: "user_early_delete", Email: "early@example.com", UpdatedAt: at(1)}))
	if code != http.StatusOK || out["status"] != "ignored_deleted" {
		t.Errorf("create after delete: %d %v", code, out)
	}
	if _, err := getUser(t, in, "user_early_delete"); status.Code(err) != codes.NotFound {
		t.Errorf("GetUser of a user deleted first: %v", err)
	}
}

// TestEmailConflicts: a newer state takes an email from a stale holder; an
// older state never takes it from a newer holder; nothing ends in 5xx.
func TestEmailConflicts(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	u := func(id, email string, n int) clerkhook.SampleUser {
		return clerkhook.SampleUser{ID: id, Email: email, UpdatedAt: at(n)}
	}
	// Clerk's order: A has x, B has y; A moves to z (t3); B moves to x (t4);
	// A moves to y (t5). Delivered: B@t4 first, then A@t1, B@t2, A@t5, A@t3.
	for i, d := range []struct {
		typ  string
		user clerkhook.SampleUser
	}{
		{"user.updated", u("user_b", "X@example.com", 4)},
		{"user.created", u("user_a", "x@example.com", 1)}, // B's newer state holds x: A is stored without it
		{"user.created", u("user_b", "y@example.com", 2)}, // stale for B
		{"user.updated", u("user_a", "y@example.com", 5)},
		{"user.updated", u("user_a", "z@example.com", 3)}, // stale for A
	} {
		if code, out := post(t, in, newDelivery(fmt.Sprintf("swap_%d", i), d.typ, d.user)); code != http.StatusOK {
			t.Fatalf("delivery %d: %d %v", i, code, out)
		}
	}
	a, _ := getUser(t, in, "user_a")
	b, _ := getUser(t, in, "user_b")
	if a.GetEmail() != "y@example.com" || b.GetEmail() != "X@example.com" {
		t.Errorf("A = %q, B = %q; want y@ and X@", a.GetEmail(), b.GetEmail())
	}

	// A lost delete: C holds w@ in userd, but C was deleted in Clerk and the
	// deletion never arrived. D signs up with w@: D gets it, C loses it.
	post(t, in, newDelivery("lost_1", "user.created", u("user_c", "w@example.com", 6)))
	code, out := post(t, in, newDelivery("lost_2", "user.created", u("user_d", "W@Example.com", 7)))
	if code != http.StatusOK || out["status"] != "created" {
		t.Fatalf("D: %d %v", code, out)
	}
	c, _ := getUser(t, in, "user_c")
	d, _ := getUser(t, in, "user_d")
	if c.GetEmail() != "" || d.GetEmail() != "W@Example.com" {
		t.Errorf("C = %q, D = %q; want C without email, D with W@Example.com", c.GetEmail(), d.GetEmail())
	}
}

// TestForgottenMessagesStayHarmless: after message ids are pruned, a late
// replay of an old message is applied again but changes nothing.
func TestForgottenMessagesStayHarmless(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	created := newDelivery("msg_old_create", "user.created", clerkhook.SampleUser{ID: "user_forget", Email: "old@example.com", UpdatedAt: at(1)})
	updated := newDelivery("msg_old_update", "user.updated", clerkhook.SampleUser{ID: "user_forget", Email: "new@example.com", UpdatedAt: at(2)})
	for _, d := range []delivery{created, updated} {
		if code, out := post(t, in, d); code != http.StatusOK {
			t.Fatalf("%s: %d %v", d.msgID, code, out)
		}
	}
	svc := users.NewService(in.Store, users.Options{InitialCredits: 10})
	n, err := svc.ForgetWebhookEvents(context.Background(), time.Now().Add(time.Minute))
	if err != nil || n != 2 {
		t.Fatalf("ForgetWebhookEvents = %d, %v; want 2", n, err)
	}
	created.sentAt = time.Now()
	if code, out := post(t, in, created); code != http.StatusOK || out["status"] != "stale" {
		t.Errorf("replayed old user.created: %d %v, want stale", code, out)
	}
	u, err := getUser(t, in, "user_forget")
	if err != nil || u.GetEmail() != "new@example.com" || u.GetCredits() != 10 {
		t.Errorf("after the replay: %v, %v", u, err)
	}
	if ts := ledgerOf(t, in, "user_forget"); len(ts) != 1 {
		t.Errorf("ledger has %d rows, want 1", len(ts))
	}
}

// lineBuffer collects log output.
type lineBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lineBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lineBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// untouchable is a domain that no rejected delivery may reach.
type untouchable struct{ t *testing.T }

func (d untouchable) ApplyClerkUser(context.Context, users.ClerkEvent) (users.EventOutcome, error) {
	d.t.Error("a rejected delivery reached the domain")
	return "", errors.New("unreachable")
}

func (d untouchable) DeleteClerkUser(context.Context, string, string, string) (users.EventOutcome, error) {
	d.t.Error("a rejected delivery reached the domain")
	return "", errors.New("unreachable")
}

func (d untouchable) ApplyClerkOrganization(context.Context, users.ClerkOrgEvent) (users.EventOutcome, error) {
	d.t.Error("a rejected delivery reached the domain")
	return "", errors.New("unreachable")
}

func (d untouchable) DeleteClerkOrganization(context.Context, string, string, string) (users.EventOutcome, error) {
	d.t.Error("a rejected delivery reached the domain")
	return "", errors.New("unreachable")
}

func (d untouchable) ApplyClerkMembership(context.Context, users.ClerkMembershipEvent) (users.EventOutcome, error) {
	d.t.Error("a rejected delivery reached the domain")
	return "", errors.New("unreachable")
}

// TestRejectionFloodIsSampled: 3,000 forged deliveries over loopback are
// each refused and counted by reason in the metrics, but only a handful
// are logged — a flood of them cannot flood the log.
func TestRejectionFloodIsSampled(t *testing.T) {
	t.Parallel()
	logs := &lineBuffer{}
	metrics := telemetry.NewMetrics()
	h, err := clerkhook.New(clerkhook.Config{Secrets: []string{apptest.WebhookSecret}, Recorder: metrics},
		untouchable{t}, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h.Routes())
	defer srv.Close()
	defer h.Close()

	body := append(clerkhook.SampleEvent("user.created", clerkhook.SampleUser{ID: "user_flood", UpdatedAt: time.Now()}),
		bytes.Repeat([]byte(" "), 16<<10)...)
	forged := []struct {
		reason string
		n      int
		req    func(i int) *http.Request
	}{
		{"bad_signature", 2000, func(i int) *http.Request {
			d := delivery{msgID: fmt.Sprintf("msg_forged_%d", i), body: body, secret: "whsec_d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==", sentAt: time.Now()}
			return d.request(t, srv.URL+clerkhook.Path)
		}},
		{"timestamp_out_of_tolerance", 500, func(i int) *http.Request {
			d := delivery{msgID: fmt.Sprintf("msg_stale_%d", i), body: body, secret: apptest.WebhookSecret, sentAt: time.Now().Add(-time.Hour)}
			return d.request(t, srv.URL+clerkhook.Path)
		}},
		{"missing_headers", 500, func(int) *http.Request {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+clerkhook.Path, bytes.NewReader(body))
			return req
		}},
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, f := range forged {
		next := atomic.Int64{}
		for range 4 {
			wg.Go(func() {
				for i := int(next.Add(1)); i <= f.n; i = int(next.Add(1)) {
					resp, err := srv.Client().Do(f.req(i))
					if err != nil {
						t.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode < 400 || resp.StatusCode >= 500 {
						t.Errorf("%s: %d, want a 4xx", f.reason, resp.StatusCode)
					}
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(start)

	rec := httptest.NewRecorder()
	metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, f := range forged {
		if want := fmt.Sprintf("userd_webhook_rejected_total{reason=%q} %d\n", f.reason, f.n); !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %s", strings.TrimSpace(want))
		}
	}
	lines := strings.Count(logs.String(), "\n")
	// 10 at once, one per 6 s after that, a summary per minute.
	limit := 10 + int(elapsed/(6*time.Second)) + int(elapsed/time.Minute) + 1
	t.Logf("3000 forged deliveries in %s: %d log lines", elapsed.Round(time.Millisecond), lines)
	if lines > limit {
		t.Errorf("%d log lines for 3000 rejections in %s, want at most %d", lines, elapsed.Round(time.Millisecond), limit)
	}
	// Closing the handler logs what was not logged yet: every rejection is
	// in the log, on a line of its own or in a summary.
	h.Close()
	logged, summed := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var entry struct {
			Msg   string `json:"msg"`
			Count int    `json:"count"`
		}
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if entry.Msg == "webhook rejected" {
			logged++
		} else {
			summed += entry.Count
		}
	}
	if logged+summed != 3000 {
		t.Errorf("%d rejections logged and %d summed up, want 3000 in all", logged, summed)
	}
	if strings.Contains(logs.String(), "v1,") || strings.Contains(logs.String(), "user_flood") {
		t.Error("a log line carries a signature or the body")
	}
}
