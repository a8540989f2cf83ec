package standby_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/consistency"
	"github.com/userd/userd/internal/testwait"
)

// TestReadYourWritesOnAPausedStandby runs userd against a real primary
// and streaming standby whose replay the test pauses: a read carrying the
// token of the caller's write never returns the balance from before it
// (the primary serves it once the bounded wait is over, the standby once
// it has replayed that far), while the same read without the token is
// served by the paused standby and shows the old balance — the lag the
// token protects from. A second userd with a short lag bound skips the
// lagging standby for reads without a token.
func TestReadYourWritesOnAPausedStandby(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL primary and standby")
	}
	ctx := context.Background()
	c := newCluster(t)
	c.createDB(ctx, "userd")
	start := func(maxLag time.Duration) *apptest.Instance {
		return apptest.Start(t, func(cfg *config.Serve) {
			cfg.Database.URL = c.url(c.primaryPort, "userd")
			cfg.ReadURL = c.url(c.standbyPort, "userd")
			cfg.ReadMaxLag = maxLag
			cfg.ReadTokenWait = 200 * time.Millisecond
		})
	}
	// A standby as stale as the test makes it still counts as within
	// bounds for this one: what a token-less read gets is the standby's.
	in := start(time.Hour)
	sb := c.pool(ctx, c.standbyPort, "userd")
	const id = "user_ryw"

	var h metadata.MD
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: id}, grpc.Header(&h)); err != nil {
		t.Fatal(err)
	}
	ensured := tokenOf(t, h)
	// The token of the creation lets a read find the user right away.
	if u := getUser(ctx, t, in, id, ensured); u.GetCredits() != 10 {
		t.Fatalf("credits after creation: %d, want 10", u.GetCredits())
	}
	waitStandbyHas(ctx, t, sb, id, 10)
	testwait.Until(t, 30*time.Second, "the standby to serve a read", func() bool {
		before := served(t, in, "standby", "ok")
		getUser(ctx, t, in, id, "")
		return served(t, in, "standby", "ok") > before
	})

	c.pauseReplay(ctx, sb)
	if _, err := in.Client.DeductCredits(ctx, &userdv1.DeductCreditsRequest{
		ClerkUserId: id, Amount: 3, IdempotencyKey: "ryw-1",
	}, grpc.Header(&h)); err != nil {
		t.Fatal(err)
	}
	deducted := tokenOf(t, h)
	if deducted == ensured {
		t.Fatalf("the deduction's token %s is the creation's", deducted)
	}

	// Without the token: the paused standby answers, from before the
	// deduction.
	before := served(t, in, "standby", "ok")
	if u := getUser(ctx, t, in, id, ""); u.GetCredits() != 10 {
		t.Fatalf("a read without a token got %d credits: the paused standby should have served the stale 10", u.GetCredits())
	}
	if served(t, in, "standby", "ok") != before+1 {
		t.Fatal("the read without a token was not served by the standby")
	}

	// With it: never the old balance. The standby cannot reach the token
	// while paused, so the primary serves once the wait is over.
	for range 3 {
		waited := served(t, in, "primary", "token_wait")
		if u := getUser(ctx, t, in, id, deducted); u.GetCredits() != 7 {
			t.Fatalf("a read with the deduction's token got %d credits, want 7", u.GetCredits())
		}
		if served(t, in, "primary", "token_wait") != waited+1 {
			t.Fatal("the read with the token was not served by the primary after the wait")
		}
	}
	// The same over REST: the deduction's Userd-Consistency-Token header,
	// sent back on a read.
	restToken := restDeduct(t, in, id, 2, "ryw-2")
	if credits := restGetUser(t, in, id, restToken); credits != 5 {
		t.Fatalf("a REST read with the token got %d credits, want 5", credits)
	}
	if credits := restGetUser(t, in, id, ""); credits != 10 {
		t.Fatalf("a REST read without a token got %d credits, want the paused standby's 10", credits)
	}
	// The ledger, too.
	page, err := in.Client.ListCreditTransactions(metadata.AppendToOutgoingContext(ctx, consistency.Header, restToken),
		&userdv1.ListCreditTransactionsRequest{ClerkUserId: id})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(page.GetTransactions()); n != 3 {
		t.Fatalf("the ledger read with the token has %d entries, want 3", n)
	}

	// A second userd with a lag bound the paused standby now exceeds: its
	// reads without a token skip the standby.
	strict := start(300 * time.Millisecond)
	name := "127.0.0.1:" + strconv.Itoa(c.standbyPort)
	testwait.Until(t, 30*time.Second, "the standby's measured lag to pass 300ms", func() bool {
		return lagOf(t, strict, name) > 0.3
	})
	lagging := served(t, strict, "primary", "lagging")
	if u := getUser(ctx, t, strict, id, ""); u.GetCredits() != 5 {
		t.Fatalf("a read without a token under a 300ms lag bound got %d credits, want the primary's 5", u.GetCredits())
	}
	if served(t, strict, "primary", "lagging") != lagging+1 {
		t.Fatal("the read was not counted as skipping a lagging standby")
	}

	// Replay resumed: the standby catches up and serves reads with the
	// token, never an older balance.
	c.resumeReplay(ctx, sb)
	testwait.Until(t, 30*time.Second, "the standby to serve a read with the token", func() bool {
		ok := served(t, in, "standby", "ok")
		if u := getUser(ctx, t, in, id, restToken); u.GetCredits() != 5 {
			t.Fatalf("a read with the token got %d credits, want 5", u.GetCredits())
		}
		return served(t, in, "standby", "ok") > ok
	})
	testwait.Until(t, 30*time.Second, "the strict userd to use the caught-up standby again", func() bool {
		ok := served(t, strict, "standby", "ok")
		if u := getUser(ctx, t, strict, id, ""); u.GetCredits() != 5 && u.GetCredits() != 10 {
			t.Fatalf("credits %d", u.GetCredits())
		}
		return served(t, strict, "standby", "ok") > ok
	})

	// The standby crashes: reads go on, from the primary, with or
	// without a token, and the standby is reported down.
	c.stop("standby")
	for _, tok := range []string{"", restToken, "", restToken} {
		if u := getUser(ctx, t, in, id, tok); u.GetCredits() != 5 {
			t.Fatalf("with the standby down, a read got %d credits, want 5", u.GetCredits())
		}
	}
	testwait.Until(t, 30*time.Second, "the standby reported down", func() bool {
		v, ok := sample(t, metrics(t, in), `userd_db_standby_up{standby="`+name+`"}`)
		return ok && v == 0
	})
	before = served(t, in, "primary", "no_standby")
	if u := getUser(ctx, t, in, id, ""); u.GetCredits() != 5 {
		t.Fatalf("with the standby down, a read got %d credits, want 5", u.GetCredits())
	}
	if served(t, in, "primary", "no_standby") != before+1 {
		t.Fatal("the read with the standby down was not counted as no_standby")
	}
}

func tokenOf(t *testing.T, h metadata.MD) string {
	t.Helper()
	v := h.Get(consistency.Header)
	if len(v) != 1 {
		t.Fatalf("response header %s: %q, want one token", consistency.Header, v)
	}
	if _, err := consistency.ParseToken(v[0]); err != nil {
		t.Fatalf("response token %q: %v", v[0], err)
	}
	return v[0]
}

func getUser(ctx context.Context, t *testing.T, in *apptest.Instance, id, token string) *userdv1.User {
	t.Helper()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, consistency.Header, token)
	}
	resp, err := in.Client.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: id}})
	if err != nil {
		t.Fatalf("GetUser: %v", err)
	}
	return resp.GetUser()
}

func waitStandbyHas(ctx context.Context, t *testing.T, sb *pgxpool.Pool, id string, credits int64) {
	t.Helper()
	testwait.Until(t, 30*time.Second, "the standby to replay the user", func() bool {
		var c int64
		return sb.QueryRow(ctx, "SELECT a.credits FROM users u JOIN accounts a ON a.id = u.id WHERE u.clerk_user_id = $1", id).Scan(&c) == nil && c == credits
	})
}

func restDo(t *testing.T, in *apptest.Instance, method, path, body, token string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, in.HTTPURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apptest.ServiceToken)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set(consistency.HTTPHeader, token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func restDeduct(t *testing.T, in *apptest.Instance, id string, amount int, key string) string {
	t.Helper()
	resp := restDo(t, in, http.MethodPost, "/v1/users/"+id+"/credits:deduct",
		`{"amount":"`+strconv.Itoa(amount)+`","idempotency_key":"`+key+`"}`, "")
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("REST deduct: %d %s", resp.StatusCode, body)
	}
	tok := resp.Header.Get(consistency.HTTPHeader)
	if _, err := consistency.ParseToken(tok); err != nil {
		t.Fatalf("REST deduct's %s header %q: %v", consistency.HTTPHeader, tok, err)
	}
	return tok
}

var creditsField = regexp.MustCompile(`"credits":\s*"?(\d+)`)

func restGetUser(t *testing.T, in *apptest.Instance, id, token string) int64 {
	t.Helper()
	resp := restDo(t, in, http.MethodGet, "/v1/users/"+id, "", token)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("REST get user: %d %s", resp.StatusCode, body)
	}
	m := creditsField.FindSubmatch(body)
	if m == nil {
		t.Fatalf("no credits in %s", body)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// metrics reads the instance's /metrics.
func metrics(t *testing.T, in *apptest.Instance) string {
	t.Helper()
	resp, err := http.Get(in.OpsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

func sample(t *testing.T, text, series string) (float64, bool) {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f, true
		}
	}
	return 0, false
}

// served is userd_db_standby_eligible_reads_total of one outcome.
func served(t *testing.T, in *apptest.Instance, by, reason string) float64 {
	t.Helper()
	v, ok := sample(t, metrics(t, in), `userd_db_standby_eligible_reads_total{reason="`+reason+`",served_by="`+by+`"}`)
	if !ok {
		t.Fatalf("no userd_db_standby_eligible_reads_total for %s/%s", by, reason)
	}
	return v
}

// lagOf is userd_db_standby_lag_seconds of a standby, -1 when absent.
func lagOf(t *testing.T, in *apptest.Instance, name string) float64 {
	t.Helper()
	v, ok := sample(t, metrics(t, in), `userd_db_standby_lag_seconds{standby="`+name+`"}`)
	if !ok {
		return -1
	}
	return v
}

// TestBadTokensAreRefused: a read or a write whose consistency token is
// not one userd made fails INVALID_ARGUMENT naming the header and changes
// nothing, with or without standbys; without them and without the read
// cache, writes return no token.
func TestBadTokensAreRefused(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, func(c *config.Serve) { c.ReadCache = false })
	ctx := context.Background()
	const id = "user_badtoken"
	var h metadata.MD
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: id}, grpc.Header(&h)); err != nil {
		t.Fatal(err)
	}
	if v := h.Get(consistency.Header); len(v) != 0 {
		t.Fatalf("without standbys or the read cache a write returned a token: %q", v)
	}
	good := consistency.Token{LSN: 1 << 30}.String()
	for _, tc := range []struct{ name, token string }{
		{"Empty", ""},
		{"Garbage", "not-a-token"},
		{"Truncated", good[:11]},
		{"TooLong", good + "A"},
		{"NotBase64", "!!!!!!!!!!!!"},
		{"UnknownVersion", "AwAAAABAAAAA"}, // version 2 is the read cache's
		{"ZeroPosition", "AQAAAAAAAAAA"},
		{"ZeroXid", "AgAAAAAAAAAA"},       // a version-2 (read cache) token of transaction id 0
		{"XidOutOfRange", "AoAAAAAAAAAA"}, // version 2 above 2^63-1, which no xid8 reaches
	} {
		t.Run(tc.name, func(t *testing.T) {
			tctx := metadata.AppendToOutgoingContext(ctx, consistency.Header, tc.token)
			_, err := in.Client.GetUser(tctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: id}})
			wantInvalid(t, err)
			_, err = in.Client.DeductCredits(tctx, &userdv1.DeductCreditsRequest{ClerkUserId: id, Amount: 1, IdempotencyKey: "bad-" + tc.name})
			wantInvalid(t, err)
			stream, err := in.Client.WatchUserEvents(tctx, &userdv1.WatchUserEventsRequest{ClerkUserId: id})
			if err == nil {
				_, err = stream.Recv()
			}
			wantInvalid(t, err)
			if credits := restGetUserStatus(t, in, id, tc.token); credits != http.StatusBadRequest && tc.token != "" {
				t.Fatalf("REST read with token %q: %d, want 400", tc.token, credits)
			}
		})
	}
	// Nothing was deducted; a good token is accepted (and ignored).
	u := getUser(ctx, t, in, id, good)
	if u.GetCredits() != 10 {
		t.Fatalf("credits %d after refused deductions, want 10", u.GetCredits())
	}
}

func wantInvalid(t *testing.T, err error) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() == codes.InvalidArgument {
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range br.GetFieldViolations() {
					if v.GetField() == consistency.Header {
						return
					}
				}
			}
		}
	}
	t.Fatalf("got %v (%v), want INVALID_ARGUMENT naming %s", err, st.Details(), consistency.Header)
}

func restGetUserStatus(t *testing.T, in *apptest.Instance, id, token string) int {
	t.Helper()
	resp := restDo(t, in, http.MethodGet, "/v1/users/"+id, "", token)
	defer resp.Body.Close()
	_, _ = io.ReadAll(resp.Body)
	return resp.StatusCode
}
