package gateway_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/userd/userd/gen/openapi"
	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/gateway"
	"github.com/userd/userd/internal/httpmw"
	"github.com/userd/userd/internal/users"
)

type bundle struct {
	in    *apptest.Instance
	clerk *clerktest.Clerk
	// http checks every response against the OpenAPI document.
	http *http.Client
}

// setup runs userd trusting a fake Clerk's JWKS and Backend API.
func setup(t *testing.T, tweak func(*config.Serve, *clerktest.Clerk)) bundle {
	t.Helper()
	fake := clerktest.New(t)
	fake.SetUser(clerkhook.SampleUser{ID: "user_alice", Email: "alice@example.com", FirstName: "Alice", UpdatedAt: time.Now()})
	fake.SetUser(clerkhook.SampleUser{ID: "user_bob", Email: "bob@example.com", FirstName: "Bob", UpdatedAt: time.Now()})
	in := apptest.Start(t, func(c *config.Serve) {
		c.JWKSURL = fake.JWKSURL()
		c.Issuer = fake.Issuer()
		c.AuthorizedParties = clerktest.Party + ",https://admin.example.com"
		c.SecretKey = clerktest.SecretKey
		c.APIURL = fake.APIURL()
		if tweak != nil {
			tweak(c, fake)
		}
	})
	return bundle{in: in, clerk: fake, http: in.HTTPClient(t)}
}

type response struct {
	status int
	header http.Header
	body   map[string]any
}

// call sends a REST request with a bearer token ("" for none).
func (b bundle) call(t *testing.T, method, path, token string, body any, headers ...string) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, b.in.HTTPURL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := b.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := response{status: resp.StatusCode, header: resp.Header}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out.body); err != nil {
			t.Fatalf("%s %s: body is not JSON: %q", method, path, raw)
		}
	}
	return out
}

func withToken(token string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}

func field(m map[string]any, path ...string) any {
	var v any = m
	for _, p := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[p]
	}
	return v
}

func TestEndUserSignsInBeforeTheWebhook(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	alice := b.clerk.UserToken("user_alice")

	if r := b.call(t, "GET", "/v1/users/me", alice, nil); r.status != http.StatusNotFound {
		t.Errorf("GET me before ensure: %d %v", r.status, r.body)
	}
	// The body's profile is ignored: the email comes from Clerk.
	r := b.call(t, "POST", "/v1/users/me:ensure", alice, map[string]any{"email": "mallory@example.com"})
	if r.status != http.StatusOK || field(r.body, "created") != true ||
		field(r.body, "user", "email") != "alice@example.com" || field(r.body, "user", "firstName") != "Alice" ||
		field(r.body, "user", "credits") != "10" || field(r.body, "user", "clerkUserId") != "user_alice" {
		t.Fatalf("POST me:ensure: %d %v", r.status, r.body)
	}
	if b.clerk.APIHits.Load() != 1 {
		t.Errorf("Backend API called %d times, want 1", b.clerk.APIHits.Load())
	}
	r = b.call(t, "POST", "/v1/users/me:ensure", alice, nil)
	if r.status != http.StatusOK || field(r.body, "created") != false || b.clerk.APIHits.Load() != 1 {
		t.Errorf("second ensure: %d %v (API hits %d)", r.status, r.body, b.clerk.APIHits.Load())
	}
	if r := b.call(t, "GET", "/v1/users/me", alice, nil); r.status != http.StatusOK || field(r.body, "user", "email") != "alice@example.com" {
		t.Errorf("GET me: %d %v", r.status, r.body)
	}
	if r := b.call(t, "GET", "/v1/users/user_alice", alice, nil); r.status != http.StatusOK {
		t.Errorf("GET own id: %d %v", r.status, r.body)
	}
	r = b.call(t, "GET", "/v1/users/me/credit-transactions", alice, nil)
	txs, _ := r.body["transactions"].([]any)
	if r.status != http.StatusOK || len(txs) != 1 || field(txs[0].(map[string]any), "kind") != "TRANSACTION_KIND_INITIAL" {
		t.Errorf("GET me/credit-transactions: %d %v", r.status, r.body)
	}
	// The same token over gRPC.
	got, err := b.in.Client.GetUser(withToken(alice), &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "me"}})
	if err != nil || got.GetUser().GetEmail() != "alice@example.com" {
		t.Errorf("gRPC GetUser(me): %v, %v", got, err)
	}
}

func TestEmailClaimAvoidsTheBackendAPI(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	claims := b.clerk.Claims("user_carol")
	claims["email"] = "carol@example.com"
	r := b.call(t, "POST", "/v1/users/me:ensure", b.clerk.Token(claims, "kid-1"), nil)
	if r.status != http.StatusOK || field(r.body, "user", "email") != "carol@example.com" || b.clerk.APIHits.Load() != 0 {
		t.Errorf("ensure with email claim: %d %v (API hits %d)", r.status, r.body, b.clerk.APIHits.Load())
	}
	// The webhook, with Clerk's full profile, still replaces the claims' one.
	u, err := b.in.Store.GetLiveUserByClerkID(context.Background(), "user_carol")
	if err != nil || u.ClerkUpdatedAt != 1 {
		t.Errorf("claims profile stored with version %d (%v), want 1", u.ClerkUpdatedAt, err)
	}
}

func TestServiceOverREST(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	svc := apptest.ServiceToken
	r := b.call(t, "POST", "/v1/users/user_dave:ensure", svc, map[string]any{"email": "dave@example.com", "firstName": "Dave"})
	if r.status != http.StatusOK || field(r.body, "created") != true || field(r.body, "user", "email") != "dave@example.com" {
		t.Fatalf("ensure: %d %v", r.status, r.body)
	}
	id, _ := field(r.body, "user", "id").(string)
	for _, path := range []string{"/v1/users/user_dave", "/v1/users:lookup?email=DAVE@example.com", "/v1/users:lookup?id=" + id} {
		if r := b.call(t, "GET", path, svc, nil); r.status != http.StatusOK || field(r.body, "user", "id") != id {
			t.Errorf("GET %s: %d %v", path, r.status, r.body)
		}
	}
	deduct := func() response {
		return b.call(t, "POST", "/v1/users/user_dave/credits:deduct", svc, map[string]any{"amount": 4, "reason": "job"},
			"Idempotency-Key", "job-7", "X-Request-Id", "req-abc")
	}
	first := deduct()
	if first.status != http.StatusOK || first.body["balance"] != "6" || field(first.body, "transaction", "idempotencyKey") != "job-7" {
		t.Fatalf("deduct: %d %v", first.status, first.body)
	}
	if first.header.Get("X-Request-Id") != "req-abc" {
		t.Errorf("X-Request-Id = %q, want the caller's", first.header.Get("X-Request-Id"))
	}
	if again := deduct(); again.status != http.StatusOK || field(again.body, "transaction", "id") != field(first.body, "transaction", "id") ||
		again.body["replayed"] != true || first.body["replayed"] != false {
		t.Errorf("retry with the same Idempotency-Key: %d %v (first call replayed %v); want the original entry, replayed true",
			again.status, again.body, first.body["replayed"])
	}
	r = b.call(t, "POST", "/v1/users/user_dave/credits:deduct", svc, map[string]any{"amount": 4, "idempotencyKey": "other"},
		"Idempotency-Key", "job-7")
	if r.status != http.StatusBadRequest {
		t.Errorf("key in body and header differ: %d %v", r.status, r.body)
	}
	r = b.call(t, "POST", "/v1/users/user_dave/credits:deduct", svc, map[string]any{"amount": 5}, "Idempotency-Key", "job-7")
	if r.status != http.StatusConflict || !strings.Contains(fmt.Sprint(r.body["details"]), "IDEMPOTENCY_KEY_REUSED") {
		t.Errorf("key reused with another amount: %d %v", r.status, r.body)
	}
	if r := b.call(t, "POST", "/v1/users/user_dave/credits:grant", svc, map[string]any{"amount": 10, "idempotencyKey": "g1"}); r.status != http.StatusOK || r.body["balance"] != "16" {
		t.Errorf("grant: %d %v", r.status, r.body)
	}
	r = b.call(t, "POST", "/v1/users/user_dave/plan", svc, map[string]any{"plan": "PLAN_PRO", "bonusCredits": 5, "idempotencyKey": "p1"})
	if r.status != http.StatusOK || field(r.body, "user", "plan") != "PLAN_PRO" || field(r.body, "user", "credits") != "21" {
		t.Errorf("plan: %d %v", r.status, r.body)
	}
	r = b.call(t, "GET", "/v1/users/user_dave/credit-transactions?pageSize=2", svc, nil)
	if txs, _ := r.body["transactions"].([]any); r.status != http.StatusOK || len(txs) != 2 || r.body["nextPageToken"] == "" {
		t.Errorf("list: %d %v", r.status, r.body)
	}
	if r := b.call(t, "GET", "/v1/users/me", svc, nil); r.status != http.StatusBadRequest {
		t.Errorf("service asking for me: %d %v", r.status, r.body)
	}
	if r := b.call(t, "GET", "/v1/users/user_nobody", svc, nil); r.status != http.StatusNotFound || r.body["code"] != float64(codes.NotFound) {
		t.Errorf("unknown user: %d %v", r.status, r.body)
	}
}

func TestInsufficientCreditsIs402(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	svc := apptest.ServiceToken
	b.call(t, "POST", "/v1/users/user_erin:ensure", svc, map[string]any{})
	r := b.call(t, "POST", "/v1/users/user_erin/credits:deduct", svc, map[string]any{"amount": 11, "idempotencyKey": "big"})
	if r.status != http.StatusPaymentRequired || r.body["code"] != float64(codes.FailedPrecondition) {
		t.Fatalf("got %d %v, want 402", r.status, r.body)
	}
	details, _ := r.body["details"].([]any)
	found := false
	for _, d := range details {
		dm, _ := d.(map[string]any)
		if dm["reason"] == "INSUFFICIENT_CREDITS" && field(dm, "metadata", "required") == "11" && field(dm, "metadata", "available") == "10" {
			found = true
		}
	}
	if !found {
		t.Errorf("details lack ErrorInfo INSUFFICIENT_CREDITS {required 11, available 10}: %v", r.body)
	}
}

// TestAttacks: every forged, stale or misdirected credential is refused
// with 401 / UNAUTHENTICATED on both transports, and touches nothing.
func TestAttacks(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	c := b.clerk
	victim := "user_alice"
	claims := func(mut func(jwt.MapClaims)) jwt.MapClaims {
		cl := c.Claims(victim)
		if mut != nil {
			mut(cl)
		}
		return cl
	}
	valid := c.UserToken(victim)
	parts := strings.Split(valid, ".")
	tamperedPayload, _ := json.Marshal(claims(func(cl jwt.MapClaims) { cl["sub"] = "user_bob" }))
	pubPEM := []byte(c.PublicKeyPEM("kid-1"))
	hs256 := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(nil))
	hs256.Header["kid"] = "kid-1"
	hsToken, _ := hs256.SignedString(pubPEM)
	noneToken, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	// Signed by Clerk's key, but naming a critical extension userd does not
	// understand (RFC 7515 §4.1.11: must be refused).
	critical := jwt.NewWithClaims(jwt.SigningMethodRS256, claims(nil))
	critical.Header["kid"] = "kid-1"
	critical.Header["crit"] = []string{"https://evil.example.com/skip-checks"}
	critical.Header["https://evil.example.com/skip-checks"] = true
	criticalToken, _ := critical.SignedString(c.Key("kid-1"))
	now := time.Now()
	century := now.AddDate(100, 0, 0)

	cases := []struct {
		name, header string
	}{
		{"NoHeader", ""},
		{"NotBearer", "Basic " + base64.StdEncoding.EncodeToString([]byte("user:pass"))},
		{"BearerWithoutToken", "Bearer"},
		{"BearerBlank", "Bearer    "},
		{"Garbage", "Bearer not.a.jwt"},
		{"AlgNone", "Bearer " + noneToken},
		{"HS256WithPublicKeyAsSecret", "Bearer " + hsToken},
		{"Expired", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) {
			cl["exp"] = time.Now().Add(-time.Minute).Unix()
			cl["iat"] = time.Now().Add(-2 * time.Minute).Unix()
		}), "kid-1")},
		{"NotYetValid", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { cl["nbf"] = time.Now().Add(time.Minute).Unix() }), "kid-1")},
		{"NoExpiry", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { delete(cl, "exp") }), "kid-1")},
		{"CriticalHeader", "Bearer " + criticalToken},
		{"ExpiryAsString", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { cl["exp"] = strconv.FormatInt(century.Unix(), 10) }), "kid-1")},
		{"NotBeforeAsString", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { cl["nbf"] = strconv.FormatInt(now.Unix(), 10) }), "kid-1")},
		{"IssuedAtAsString", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { cl["iat"] = strconv.FormatInt(now.Unix(), 10) }), "kid-1")},
		{"ExpiryNull", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { cl["exp"] = nil }), "kid-1")},
		{"LivesACentury", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { cl["exp"] = century.Unix() }), "kid-1")},
		{"LivesLongerThanTheMaximum", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { cl["exp"] = now.Add(5*time.Minute + 30*time.Second).Unix() }), "kid-1")},
		{"LivesLongWithoutIssuedAt", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) {
			delete(cl, "iat")
			cl["exp"] = now.Add(time.Hour).Unix()
		}), "kid-1")},
		{"FutureIssuedAtHidesLifetime", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) {
			cl["iat"] = century.Add(-time.Minute).Unix()
			cl["exp"] = century.Unix()
		}), "kid-1")},
		{"WrongIssuer", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { cl["iss"] = "https://evil.example.com" }), "kid-1")},
		{"WrongAuthorizedParty", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { cl["azp"] = "https://evil.example.com" }), "kid-1")},
		{"NoAuthorizedParty", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { delete(cl, "azp") }), "kid-1")},
		{"SubjectNotAUser", "Bearer " + c.Token(claims(func(cl jwt.MapClaims) { cl["sub"] = "org_1" }), "kid-1")},
		{"UnknownKid", "Bearer " + clerktest.Sign(t, claims(nil), "kid-unknown", clerktest.NewKey(t))},
		{"TamperedPayload", "Bearer " + parts[0] + "." + base64.RawURLEncoding.EncodeToString(tamperedPayload) + "." + parts[2]},
		{"SignedByAnotherKey", "Bearer " + clerktest.Sign(t, claims(nil), "kid-1", clerktest.NewKey(t))},
		{"WrongServiceToken", "Bearer " + strings.Replace(apptest.ServiceToken, "0", "1", 1)},
		{"ServiceTokenPrefix", "Bearer " + apptest.ServiceToken[:len(apptest.ServiceToken)-1]},
	}
	apiHits := c.APIHits.Load()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, route := range []struct{ method, path string }{
				{"POST", "/v1/users/me:ensure"},
				{"GET", "/v1/users/me"},
				{"POST", "/v1/users/user_alice:ensure"},
			} {
				req, _ := http.NewRequest(route.method, b.in.HTTPURL+route.path, strings.NewReader("{}"))
				if tc.header != "" {
					req.Header.Set("Authorization", tc.header)
				}
				resp, err := b.http.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("REST %s %s: %d, want 401 with WWW-Authenticate", route.method, route.path, resp.StatusCode)
				}
			}
			ctx := context.Background()
			if tc.header != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", tc.header)
			} else {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "")
			}
			_, err := b.in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "me"})
			if status.Code(err) != codes.Unauthenticated {
				t.Errorf("gRPC EnsureUser: %v, want UNAUTHENTICATED", err)
			}
		})
	}
	if _, err := b.in.Store.GetUserByClerkIDIncludingDeleted(context.Background(), victim); !errors.Is(err, users.ErrNoRow) {
		t.Errorf("an attack created the victim's user (err %v)", err)
	}
	if c.APIHits.Load() != apiHits {
		t.Errorf("attacks reached Clerk's Backend API %d times", c.APIHits.Load()-apiHits)
	}
}

// TestCrossUserAccess: an end user sees and touches only itself; other
// users are NOT_FOUND on every route; credits and plans are service-only.
func TestCrossUserAccess(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	svc := apptest.ServiceToken
	bob := b.call(t, "POST", "/v1/users/user_bob:ensure", svc, map[string]any{"email": "bob@example.com"})
	bobID, _ := field(bob.body, "user", "id").(string)
	alice := b.clerk.UserToken("user_alice")
	b.call(t, "POST", "/v1/users/me:ensure", alice, nil)

	for _, route := range []struct{ method, path string }{
		{"GET", "/v1/users/user_bob"},
		{"GET", "/v1/users/user_nobody"},
		{"POST", "/v1/users/user_bob:ensure"},
		{"GET", "/v1/users/user_bob/credit-transactions"},
		{"GET", "/v1/users:lookup?email=bob@example.com"},
		{"GET", "/v1/users:lookup?id=" + bobID},
	} {
		if r := b.call(t, route.method, route.path, alice, map[string]any{}); r.status != http.StatusNotFound {
			t.Errorf("alice %s %s: %d %v, want 404", route.method, route.path, r.status, r.body)
		}
	}
	for _, target := range []string{"me", "user_alice", "user_bob"} {
		for _, route := range []struct {
			path string
			body map[string]any
		}{
			{"/credits:deduct", map[string]any{"amount": 1, "idempotencyKey": "k"}},
			{"/credits:grant", map[string]any{"amount": 1000, "idempotencyKey": "k"}},
			{"/plan", map[string]any{"plan": "PLAN_ENTERPRISE", "idempotencyKey": "k"}},
		} {
			if r := b.call(t, "POST", "/v1/users/"+target+route.path, alice, route.body); r.status != http.StatusForbidden {
				t.Errorf("alice POST %s%s: %d %v, want 403", target, route.path, r.status, r.body)
			}
		}
	}
	// The same rules over gRPC.
	ctx := withToken(alice)
	_, err := b.in.Client.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_Email{Email: "bob@example.com"}})
	if status.Code(err) != codes.NotFound {
		t.Errorf("gRPC GetUser(bob's email): %v", err)
	}
	_, err = b.in.Client.ListCreditTransactions(ctx, &userdv1.ListCreditTransactionsRequest{ClerkUserId: "user_bob"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("gRPC ListCreditTransactions(bob): %v", err)
	}
	_, err = b.in.Client.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: "me", Amount: 1000, IdempotencyKey: "k"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("gRPC GrantCredits(me): %v", err)
	}
	// Nothing changed for either.
	for _, id := range []string{"user_alice", "user_bob"} {
		u, err := b.in.Store.GetLiveUserByClerkID(context.Background(), id)
		if err != nil || u.Credits != 10 || u.Plan != users.PlanFree {
			t.Errorf("%s = %+v, %v; want untouched", id, u, err)
		}
	}
}

// TestOpenAPIDocument: /openapi.json is a valid OpenAPI 3 document (kin-openapi's
// validator) that says what clients need beyond the proto; it is the
// committed gen/openapi document with the binary's version.
func TestOpenAPIDocument(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *config.Serve, _ *clerktest.Clerk) { c.Version = "v9.8.7-test" })
	resp, err := b.http.Get(b.in.HTTPURL + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	doc, err := openapi3.NewLoader().LoadFromData(raw)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the served document is not valid OpenAPI: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") || doc.Info.Title != "userd" || doc.Info.Version != "v9.8.7-test" {
		t.Errorf("openapi %q, title %q, version %q; want 3.x, userd, v9.8.7-test", doc.OpenAPI, doc.Info.Title, doc.Info.Version)
	}
	// Where the API is (issue 18, item 8: redocly's one error was its
	// absence), with defaults that are `userd serve`'s own.
	if len(doc.Servers) != 1 || doc.Servers[0].URL != "{scheme}://{host}" {
		t.Errorf("servers %+v, want one templated server", doc.Servers)
	} else if u, err := doc.Servers[0].BasePath(); err != nil || doc.Servers[0].Variables["host"].Default != "localhost:8080" {
		t.Errorf("server: base path %q (%v), host %+v", u, err, doc.Servers[0].Variables["host"])
	}
	// startTime is optional in the schema, as in the server (missing: the
	// 30 days before the end).
	usage := doc.Paths.Find("/v1/users/{clerkUserId}/usage")
	if usage == nil || usage.Get == nil {
		t.Fatal("no GET usage operation")
	}
	if p := usage.Get.Parameters.GetByInAndName("query", "startTime"); p == nil || p.Required || !strings.Contains(p.Description, "30 days before end_time") {
		t.Errorf("startTime parameter %+v: want optional, defaulting to 30 days before end_time", p)
	}
	// Apart from the version, it is the committed document.
	var served, committed map[string]any
	_ = json.Unmarshal(raw, &served)
	_ = json.Unmarshal(openapi.JSON, &committed)
	served["info"].(map[string]any)["version"] = committed["info"].(map[string]any)["version"]
	if diff := cmp.Diff(committed, served); diff != "" {
		t.Errorf("served document differs from gen/openapi (-committed +served):\n%s", diff)
	}

	if s := doc.Components.SecuritySchemes; s["serviceToken"] == nil || s["sessionToken"] == nil || s["sessionToken"].Value.Scheme != "bearer" {
		t.Errorf("security schemes: %v", s)
	}
	if len(doc.Security) == 0 {
		t.Error("no global security requirement")
	}
	ops := map[string]*openapi3.Operation{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			ops[op.OperationID] = op
			codes := []int{200, 400, 401, 404, 500, 503, 504}
			switch op.OperationID {
			case "WatchUserEvents": // every user: nobody to find; streams are not bounded
				codes = []int{200, 400, 401, 403, 410, 500, 503}
			case "WatchUserEventsOfUser":
				codes = []int{200, 400, 401, 403, 404, 410, 500, 503}
			}
			for _, code := range codes {
				// Only operations on a user can miss one; the price list
				// has no 404 of its own.
				if code == 404 && !strings.HasPrefix(path, "/v1/users") {
					continue
				}
				if op.Responses.Status(code) == nil {
					t.Errorf("%s %s does not document %d", method, path, code)
				}
			}
		}
	}
	want := []string{"GetUser", "LookupUser", "EnsureUser", "DeductCredits", "GrantCredits", "SetPlan", "ListCreditTransactions",
		"GetUsageSummary", "CanAfford", "SetPrice", "ListPrices", "ListPriceChanges",
		"WatchUserEvents", "WatchUserEventsOfUser",
		// Accounts and organizations (issue 20).
		"GetAccount", "GetOrganizationAccount", "DeductOrganizationCredits", "GrantOrganizationCredits",
		"ListOrganizationCreditTransactions", "CanAffordOrganization", "SetMemberSpendingCap",
		"SetOrganizationPlan", "GetOrganizationUsageSummary",
		// Grants with expiry and the plan catalog (issue 21).
		"ListGrants", "ListOrganizationGrants", "GetPlanCatalog", "SetPlanAllowance",
		// Stripe billing (issue 22).
		"EnsureBillingCustomer", "SetStripePrice", "ListStripePrices"}
	if len(ops) != len(want) {
		t.Errorf("operations %v, want %v", slices.Sorted(maps.Keys(ops)), want)
	}
	for _, id := range want {
		if ops[id] == nil {
			t.Fatalf("no operation %s", id)
		}
	}
	if r := ops["DeductCredits"].Responses.Status(402); r == nil || !strings.Contains(*r.Value.Description, "INSUFFICIENT_CREDITS") {
		t.Errorf("DeductCredits 402: %+v", r)
	}
	for _, id := range []string{"DeductCredits", "GrantCredits", "SetPlan"} {
		op := ops[id]
		hasKey := false
		for _, p := range op.Parameters {
			hasKey = hasKey || p.Value.Name == "Idempotency-Key" && p.Value.In == "header"
		}
		if !hasKey || op.Responses.Status(403) == nil || op.Responses.Status(409) == nil || op.Security == nil || len(*op.Security) != 1 {
			t.Errorf("%s: Idempotency-Key %v, 403/409 documented, services-only security %v", id, hasKey, op.Security)
		}
	}
	if body := ops["EnsureUser"].RequestBody.Value; body.Required {
		t.Error("EnsureUser's body is marked required; an empty body works")
	}
	if ok := ops["WatchUserEventsOfUser"].Responses.Status(200); ok == nil || ok.Value.Content.Get("application/x-ndjson") == nil {
		t.Errorf("WatchUserEventsOfUser's 200 is not newline-delimited JSON: %+v", ok)
	}
	for _, id := range []string{"GetUser", "EnsureUser", "ListCreditTransactions", "GetUsageSummary", "CanAfford", "WatchUserEventsOfUser"} {
		for _, p := range ops[id].Parameters {
			if p.Value.Name == "clerkUserId" && !strings.Contains(p.Value.Description, `"me"`) {
				t.Errorf("%s: clerkUserId does not document me: %q", id, p.Value.Description)
			}
		}
	}
}

func TestPEMKeyNeedsNoNetwork(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *config.Serve, fake *clerktest.Clerk) {
		c.JWKSURL = ""
		c.JWTKey = fake.PublicKeyPEM("kid-1")
	})
	if r := b.call(t, "POST", "/v1/users/me:ensure", b.clerk.UserToken("user_alice"), nil); r.status != http.StatusOK {
		t.Errorf("ensure with a PEM-verified token: %d %v", r.status, r.body)
	}
	other := clerktest.Sign(t, b.clerk.Claims("user_alice"), "kid-1", clerktest.NewKey(t))
	if r := b.call(t, "GET", "/v1/users/me", other, nil); r.status != http.StatusUnauthorized {
		t.Errorf("token of another key: %d", r.status)
	}
	if n := b.clerk.JWKSHits.Load(); n != 0 {
		t.Errorf("JWKS fetched %d times in PEM mode", n)
	}
}

// TestJWKSRotation: a token signed with a key Clerk just published is
// accepted after one refetch; a flood of unknown kids causes no more.
func TestJWKSRotation(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *config.Serve, _ *clerktest.Clerk) { c.JWKSMinRefresh = time.Hour })
	alice := b.clerk.UserToken("user_alice")
	if r := b.call(t, "GET", "/v1/users/me", alice, nil); r.status != http.StatusNotFound {
		t.Fatalf("known kid: %d %v", r.status, r.body)
	}
	before := b.clerk.JWKSHits.Load()
	b.clerk.AddKey("kid-2")
	rotated := b.clerk.Token(b.clerk.Claims("user_alice"), "kid-2")
	if r := b.call(t, "GET", "/v1/users/me", rotated, nil); r.status != http.StatusNotFound {
		t.Errorf("new kid after rotation: %d %v, want 404 (authenticated, no user yet)", r.status, r.body)
	}
	afterRotation := b.clerk.JWKSHits.Load()
	if afterRotation != before+1 {
		t.Errorf("JWKS fetched %d times for the new kid, want 1", afterRotation-before)
	}
	for i := range 30 {
		tok := clerktest.Sign(t, b.clerk.Claims("user_alice"), fmt.Sprintf("kid-flood-%d", i), b.clerk.Key("kid-1"))
		if r := b.call(t, "GET", "/v1/users/me", tok, nil); r.status != http.StatusUnauthorized {
			t.Errorf("unknown kid %d: %d", i, r.status)
		}
	}
	if n := b.clerk.JWKSHits.Load() - afterRotation; n != 0 {
		t.Errorf("a flood of unknown kids fetched the JWKS %d more times, want 0 within the refresh interval", n)
	}
}

func TestNothingConfiguredRefusesEveryCall(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *config.Serve, _ *clerktest.Clerk) {
		c.ServiceTokens, c.JWKSURL, c.SecretKey = "", "", ""
	})
	if r := b.call(t, "GET", "/v1/users/user_alice", apptest.ServiceToken, nil); r.status != http.StatusUnauthorized {
		t.Errorf("REST: %d", r.status)
	}
	if _, err := b.in.Client.GetUser(context.Background(), &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_alice"}}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("gRPC: %v", err)
	}
	// Health needs no credentials.
	if r := b.call(t, "GET", "/openapi.json", "", nil); r.status != http.StatusOK {
		t.Errorf("openapi: %d", r.status)
	}
}

// TestRESTConventions: what HTTP clients and their libraries expect of the
// gateway beyond the gRPC mapping.
func TestRESTConventions(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	svc := apptest.ServiceToken
	if r := b.call(t, "POST", "/v1/users/user_plus:ensure", svc, map[string]any{"email": "ada+tag@example.com"}); r.status != http.StatusOK {
		t.Fatalf("ensure: %d %v", r.status, r.body)
	}

	t.Run("OneRequestID", func(t *testing.T) {
		for _, tc := range []struct {
			name, method, path string
			status             int
		}{
			{"Success", "GET", "/v1/users/user_plus", http.StatusOK},
			{"Error", "GET", "/v1/users/user_nobody", http.StatusNotFound},
			{"NoRoute", "GET", "/v1/nothing-here", http.StatusNotFound},
		} {
			for _, sent := range []string{"", "req-given-1"} {
				var headers []string
				if sent != "" {
					headers = []string{"X-Request-Id", sent}
				}
				r := b.call(t, tc.method, tc.path, svc, nil, headers...)
				ids := r.header.Values("X-Request-Id")
				if r.status != tc.status || len(ids) != 1 || (sent != "" && ids[0] != sent) {
					t.Errorf("%s (sent %q): %d with X-Request-Id %q, want %d with exactly one id", tc.name, sent, r.status, ids, tc.status)
				}
			}
		}
	})

	t.Run("MethodNotAllowed", func(t *testing.T) {
		for _, tc := range []struct{ method, path, allow string }{
			{"DELETE", "/v1/users/user_plus", "GET"},
			{"PUT", "/v1/users/user_plus/plan", "POST"},
			{"GET", "/v1/users/user_plus/credits:deduct", "POST"},
			{"POST", "/v1/users/user_plus/credit-transactions", "GET"},
			{"POST", "/v1/users:lookup?email=a@example.com", "GET"},
			// A form POST to a GET route is refused like any other POST
			// (grpc-gateway would otherwise run the GET).
			{"POST", "/v1/users/user_plus", "GET"},
		} {
			req, _ := http.NewRequest(tc.method, b.in.HTTPURL+tc.path, strings.NewReader("a=b"))
			req.Header.Set("Authorization", "Bearer "+svc)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := b.http.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var st map[string]any
			_ = json.Unmarshal(raw, &st)
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != tc.allow || st["code"] != float64(codes.Unimplemented) {
				t.Errorf("%s %s: %d Allow %q %s; want 405 Allow %q with a Status body", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Allow"), raw, tc.allow)
			}
		}
		// The balance is untouched by the refused calls.
		if u, err := b.in.Store.GetLiveUserByClerkID(context.Background(), "user_plus"); err != nil || u.Credits != 10 || u.Plan != users.PlanFree {
			t.Errorf("user after refused calls: %+v, %v", u, err)
		}
	})

	t.Run("UnknownFieldsIgnored", func(t *testing.T) {
		r := b.call(t, "POST", "/v1/users/user_plus/credits:deduct", svc,
			map[string]any{"amount": "1", "idempotencyKey": "fwd-1", "currency": "usd", "metadata": map[string]any{"x": 1}})
		if r.status != http.StatusOK || r.body["balance"] != "9" {
			t.Errorf("deduct with unknown fields: %d %v, want 200 balance 9", r.status, r.body)
		}
		// Known fields are still checked.
		if r := b.call(t, "POST", "/v1/users/user_plus/credits:deduct", svc, map[string]any{"amount": "one", "idempotencyKey": "fwd-2"}); r.status != http.StatusBadRequest {
			t.Errorf("deduct with a malformed amount: %d %v, want 400", r.status, r.body)
		}
		if r := b.call(t, "GET", "/v1/users/user_plus/credit-transactions?pageSize=1&futureFilter=x", svc, nil); r.status != http.StatusOK {
			t.Errorf("unknown query parameter: %d %v", r.status, r.body)
		}
	})

	t.Run("BodyTooLarge", func(t *testing.T) {
		big := strings.Repeat("x", httpmw.MaxBodyBytes)
		r := b.call(t, "POST", "/v1/users/user_plus/credits:grant", svc, map[string]any{"amount": "1", "idempotencyKey": "big", "reason": big})
		if r.status != http.StatusRequestEntityTooLarge {
			t.Errorf("grant with a body over 1 MiB: %d %v", r.status, r.body)
		}
		// The same sent chunked (no Content-Length): 413 too, not the
		// decoder's 400 (issue 18, item 8); and nothing granted.
		raw, err := json.Marshal(map[string]any{"amount": "1", "idempotencyKey": "big-chunked", "reason": big})
		if err != nil {
			t.Fatal(err)
		}
		req, err := http.NewRequest("POST", b.in.HTTPURL+"/v1/users/user_plus/credits:grant", io.MultiReader(bytes.NewReader(raw)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+svc)
		req.Header.Set("Content-Type", "application/json")
		resp, err := b.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("chunked grant with a body over 1 MiB: %d %s", resp.StatusCode, body)
		}
		// A chunked body within the limit is served.
		req, _ = http.NewRequest("POST", b.in.HTTPURL+"/v1/users/user_plus/credits:grant",
			io.MultiReader(strings.NewReader(`{"amount":"1","idempotencyKey":"small-chunked"}`)))
		req.Header.Set("Authorization", "Bearer "+svc)
		resp, err = b.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("chunked grant within the limit: %d", resp.StatusCode)
		}
	})

	t.Run("PlanWithoutBonus", func(t *testing.T) {
		r := b.call(t, "POST", "/v1/users/user_plus/plan", svc, map[string]any{"plan": "PLAN_PRO", "idempotencyKey": "plan-1"})
		if _, has := r.body["bonusTransaction"]; r.status != http.StatusOK || has || r.body["previousPlan"] != "PLAN_FREE" {
			t.Errorf("plan without bonus: %d %v", r.status, r.body)
		}
	})

	t.Run("PlusInQuery", func(t *testing.T) {
		for _, q := range []string{"ada+tag@example.com", "ada%2Btag@example.com", "ADA%2bTAG@example.com"} {
			if r := b.call(t, "GET", "/v1/users:lookup?email="+q, svc, nil); r.status != http.StatusOK || field(r.body, "user", "clerkUserId") != "user_plus" {
				t.Errorf("lookup ?email=%s: %d %v", q, r.status, r.body)
			}
		}
		// A percent-encoded space stays a space (and is no valid email).
		if r := b.call(t, "GET", "/v1/users:lookup?email=ada%20tag@example.com", svc, nil); r.status != http.StatusBadRequest {
			t.Errorf("lookup with a space: %d %v, want 400", r.status, r.body)
		}
	})
}

// TestRESTDuringOutage: with the database unreachable, REST answers a
// documented error (503, or 504 past the deadline), not a hang.
func TestRESTDuringOutage(t *testing.T) {
	t.Parallel()
	in, proxy := apptest.StartBehindProxy(t, nil)
	client := in.HTTPClient(t)
	get := func() int {
		req, _ := http.NewRequest("GET", in.HTTPURL+"/v1/users/user_gone", nil)
		req.Header.Set("Authorization", "Bearer "+apptest.ServiceToken)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code != http.StatusNotFound {
		t.Fatalf("before the outage: %d, want 404", code)
	}
	proxy.Cut()
	code := get()
	for i := 0; code == http.StatusNotFound && i < 50; i++ {
		time.Sleep(100 * time.Millisecond)
		code = get()
	}
	if code != http.StatusServiceUnavailable && code != http.StatusGatewayTimeout {
		t.Errorf("during the outage: %d, want 503 or 504", code)
	}
}

// TestSessionCookie: a same-origin frontend may authenticate with Clerk's
// __session cookie; a write so authenticated needs the frontend's Origin.
func TestSessionCookie(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	alice := b.clerk.UserToken("user_alice")
	cookie := func(token string) string { return gateway.SessionCookie + "=" + token }

	if r := b.call(t, "GET", "/v1/users/me", "", nil, "Cookie", cookie(alice)); r.status != http.StatusNotFound {
		t.Errorf("GET me with the cookie before ensure: %d %v, want 404 (authenticated, no user yet)", r.status, r.body)
	}
	for _, tc := range []struct {
		name    string
		headers []string
	}{
		{"NoOrigin", nil},
		{"ForeignOrigin", []string{"Origin", "https://evil.example.com"}},
		{"NullOrigin", []string{"Origin", "null"}},
		{"OriginLookalike", []string{"Origin", clerktest.Party + ".evil.example.com"}},
	} {
		r := b.call(t, "POST", "/v1/users/me:ensure", "", nil, append([]string{"Cookie", cookie(alice)}, tc.headers...)...)
		if r.status != http.StatusForbidden || r.body["code"] != float64(codes.PermissionDenied) {
			t.Errorf("%s: cookie write answered %d %v, want 403", tc.name, r.status, r.body)
		}
	}
	if _, err := b.in.Store.GetUserByClerkIDIncludingDeleted(context.Background(), "user_alice"); !errors.Is(err, users.ErrNoRow) {
		t.Fatalf("a refused cookie write created the user (err %v)", err)
	}
	r := b.call(t, "POST", "/v1/users/me:ensure", "", nil, "Cookie", cookie(alice), "Origin", clerktest.Party)
	if r.status != http.StatusOK || field(r.body, "user", "clerkUserId") != "user_alice" {
		t.Fatalf("cookie write from the frontend's origin: %d %v", r.status, r.body)
	}
	if r := b.call(t, "GET", "/v1/users/me/credit-transactions", "", nil, "Cookie", cookie(alice)); r.status != http.StatusOK {
		t.Errorf("ledger with the cookie: %d %v", r.status, r.body)
	}
	// The Authorization header wins over the cookie, and needs no Origin.
	r = b.call(t, "POST", "/v1/users/user_frank:ensure", apptest.ServiceToken, nil, "Cookie", cookie(alice))
	if r.status != http.StatusOK || field(r.body, "user", "clerkUserId") != "user_frank" {
		t.Errorf("service token with alice's cookie: %d %v", r.status, r.body)
	}
	if r := b.call(t, "GET", "/v1/users/me", "", nil, "Cookie", cookie("not.a.jwt")); r.status != http.StatusUnauthorized {
		t.Errorf("a forged cookie: %d %v, want 401", r.status, r.body)
	}
	// The cookie grants no more than the token: credits stay service-only.
	r = b.call(t, "POST", "/v1/users/me/credits:grant", "", map[string]any{"amount": "5", "idempotencyKey": "c1"},
		"Cookie", cookie(alice), "Origin", clerktest.Party)
	if r.status != http.StatusForbidden {
		t.Errorf("cookie grant: %d %v, want 403", r.status, r.body)
	}

	// With no authorized parties configured, no cookie write is accepted.
	open := setup(t, func(c *config.Serve, _ *clerktest.Clerk) { c.AuthorizedParties = "" })
	r = open.call(t, "POST", "/v1/users/me:ensure", "", nil, "Cookie", cookie(open.clerk.UserToken("user_bob")), "Origin", clerktest.Party)
	if r.status != http.StatusForbidden {
		t.Errorf("cookie write without CLERK_AUTHORIZED_PARTIES: %d %v, want 403", r.status, r.body)
	}
}

// TestUsageAndPricesOverREST: a service manages prices and charges by
// action over REST; an end user reads its own usage summary and
// affordability (as "me" or by its id), never another user's, over REST
// and gRPC alike, and cannot touch prices.
func TestUsageAndPricesOverREST(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	svc := apptest.ServiceToken
	alice := b.clerk.UserToken("user_alice")
	b.call(t, "POST", "/v1/users/me:ensure", alice, nil)
	b.call(t, "POST", "/v1/users/user_bob:ensure", svc, map[string]any{})

	r := b.call(t, "PUT", "/v1/prices/render", svc, map[string]any{"credits": 4})
	if r.status != http.StatusOK || field(r.body, "price", "credits") != "4" || field(r.body, "change", "changedBy") != "service:tests" {
		t.Fatalf("PUT /v1/prices/render: %d %v", r.status, r.body)
	}
	r = b.call(t, "POST", "/v1/users/user_alice/credits:deduct", svc, map[string]any{"action": "render"}, "Idempotency-Key", "job-1")
	if r.status != http.StatusOK || r.body["balance"] != "6" || field(r.body, "transaction", "reason") != "render" {
		t.Fatalf("deduct by action: %d %v", r.status, r.body)
	}
	r = b.call(t, "POST", "/v1/users/user_alice/credits:deduct", svc, map[string]any{"action": "paint"}, "Idempotency-Key", "job-2")
	if r.status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(r.body["details"]), "UNKNOWN_ACTION") {
		t.Errorf("deduct an unknown action: %d %v", r.status, r.body)
	}
	if r := b.call(t, "GET", "/v1/prices", svc, nil); r.status != http.StatusOK || field(r.body, "prices") == nil {
		t.Errorf("GET /v1/prices: %d %v", r.status, r.body)
	}
	if r := b.call(t, "GET", "/v1/price-changes?action=render", svc, nil); r.status != http.StatusOK {
		t.Errorf("GET /v1/price-changes: %d %v", r.status, r.body)
	} else if changes, _ := r.body["changes"].([]any); len(changes) != 1 {
		t.Errorf("GET /v1/price-changes: %v", r.body)
	}

	// Alice's own summary, as me and by id; times with an offset are the
	// same instants (a "+" in a query is a plus, encoded or not).
	start := time.Now().UTC().Add(-2 * time.Hour).Format(time.RFC3339)
	for _, path := range []string{
		"/v1/users/me/usage?startTime=" + start + "&groupBy=USAGE_PERIOD_DAY",
		"/v1/users/user_alice/usage?startTime=" + start + "&groupBy=USAGE_PERIOD_DAY",
		"/v1/users/me/usage?startTime=" + strings.ReplaceAll(time.Now().Add(-2*time.Hour).In(time.FixedZone("", 5*3600+1800)).Format(time.RFC3339), "+", "%2B"),
		"/v1/users/me/usage?startTime=" + time.Now().Add(-2*time.Hour).In(time.FixedZone("", 5*3600+1800)).Format(time.RFC3339),
	} {
		r := b.call(t, "GET", path, alice, nil)
		if r.status != http.StatusOK || r.body["balance"] != "6" || r.body["spent"] != "4" || r.body["granted"] != "10" || r.body["entryCount"] != "2" {
			t.Errorf("alice GET %s: %d %v", path, r.status, r.body)
		}
	}
	r = b.call(t, "GET", "/v1/users/me/credits:canAfford?action=render", alice, nil)
	if r.status != http.StatusOK || r.body["required"] != "4" || r.body["available"] != "6" || r.body["allowed"] != true {
		t.Errorf("alice canAfford render: %d %v", r.status, r.body)
	}
	r = b.call(t, "GET", "/v1/users/me/credits:canAfford?amount=7", alice, nil)
	if r.status != http.StatusOK || r.body["allowed"] != false {
		t.Errorf("alice canAfford 7: %d %v", r.status, r.body)
	}
	// Without a start the window is the 30 days before its end (issue 18,
	// item 8); the year 1 is a start like any other, not "unset".
	r = b.call(t, "GET", "/v1/users/me/usage", alice, nil)
	if r.status != http.StatusOK || r.body["spent"] != "4" || r.body["granted"] != "10" {
		t.Errorf("usage without a start: %d %v", r.status, r.body)
	} else {
		s, errS := time.Parse(time.RFC3339Nano, fmt.Sprint(r.body["startTime"]))
		e, errE := time.Parse(time.RFC3339Nano, fmt.Sprint(r.body["endTime"]))
		if errS != nil || errE != nil || e.Sub(s) != 30*24*time.Hour {
			t.Errorf("usage without a start: window %v to %v, want the 30 days before the end", r.body["startTime"], r.body["endTime"])
		}
	}
	r = b.call(t, "GET", "/v1/users/me/usage?startTime=0001-01-01T00:00:00Z", alice, nil)
	if r.status != http.StatusOK || r.body["startTime"] != "0001-01-01T00:00:00Z" || r.body["spent"] != "4" || r.body["granted"] != "10" {
		t.Errorf("usage from the year 1: %d %v", r.status, r.body)
	}
	r = b.call(t, "GET", "/v1/users/me/usage?startTime=0001-01-01T00:00:00Z&groupBy=USAGE_PERIOD_DAY", alice, nil)
	if r.status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(r.body["details"]), "more than 366 periods") {
		t.Errorf("usage by day from the year 1: %d %v, want 400 naming the periods", r.status, r.body)
	}

	// Not Bob's, and not the price list.
	for _, route := range []struct{ method, path string }{
		{"GET", "/v1/users/user_bob/usage?startTime=" + start},
		{"GET", "/v1/users/user_bob/credits:canAfford?amount=1"},
		{"GET", "/v1/users/user_nobody/usage?startTime=" + start},
	} {
		if r := b.call(t, route.method, route.path, alice, nil); r.status != http.StatusNotFound {
			t.Errorf("alice %s %s: %d %v, want 404", route.method, route.path, r.status, r.body)
		}
	}
	for _, route := range []struct {
		method, path string
		body         map[string]any
	}{
		{"PUT", "/v1/prices/render", map[string]any{"credits": 1}},
		{"GET", "/v1/prices", nil},
		{"GET", "/v1/price-changes", nil},
		{"POST", "/v1/users/me/credits:deduct", map[string]any{"action": "render", "idempotencyKey": "k"}},
	} {
		if r := b.call(t, route.method, route.path, alice, route.body); r.status != http.StatusForbidden {
			t.Errorf("alice %s %s: %d %v, want 403", route.method, route.path, r.status, r.body)
		}
	}
	// The same rules over gRPC.
	ctx := withToken(alice)
	from := timestamppb.New(time.Now().Add(-2 * time.Hour))
	if sum, err := b.in.Client.GetUsageSummary(ctx, &userdv1.GetUsageSummaryRequest{ClerkUserId: "me", StartTime: from}); err != nil || sum.GetBalance() != 6 {
		t.Errorf("gRPC GetUsageSummary(me) = %v, %v", sum, err)
	}
	if _, err := b.in.Client.GetUsageSummary(ctx, &userdv1.GetUsageSummaryRequest{ClerkUserId: "user_bob", StartTime: from}); status.Code(err) != codes.NotFound {
		t.Errorf("gRPC GetUsageSummary(bob): %v", err)
	}
	if _, err := b.in.Client.CanAfford(ctx, &userdv1.CanAffordRequest{ClerkUserId: "user_bob", Amount: 1}); status.Code(err) != codes.NotFound {
		t.Errorf("gRPC CanAfford(bob): %v", err)
	}
	if _, err := b.in.Client.SetPrice(ctx, &userdv1.SetPriceRequest{Action: "render", Credits: 1}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("gRPC SetPrice as alice: %v", err)
	}
	if _, err := b.in.Client.ListPriceChanges(ctx, &userdv1.ListPriceChangesRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("gRPC ListPriceChanges as alice: %v", err)
	}
	// Nothing changed: the price is still 4, Bob untouched.
	if r := b.call(t, "GET", "/v1/prices", svc, nil); fmt.Sprint(r.body["prices"]) == "" || !strings.Contains(fmt.Sprint(r.body["prices"]), "credits:4") {
		t.Errorf("prices after alice's attempts: %v", r.body)
	}
	if u, err := b.in.Store.GetLiveUserByClerkID(context.Background(), "user_bob"); err != nil || u.Credits != 10 {
		t.Errorf("bob = %+v, %v", u, err)
	}
}

// TestEnsureWhenClerkAnswersGarbage (issue 18, item 8): an end user's
// EnsureUser fetches the profile from Clerk's Backend API; an answer that
// is not the user asked for is Clerk failing — 503 UNAVAILABLE, to retry —
// never 500, and creates nothing.
func TestEnsureWhenClerkAnswersGarbage(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for i, body := range []string{
		`<html>502 Bad Gateway</html>`,
		`{"id":`,
		`[]`,
		`{"id":42}`,
		`{"id":"user_someone_else","updated_at":1700000000000}`,
		`{"id":"user_garbage0","updated_at":"yesterday"}`,
	} {
		id := fmt.Sprintf("user_garbage%d", i)
		b.clerk.InjectFaults(1, clerktest.Fault{Status: http.StatusOK, Body: body})
		r := b.call(t, "POST", "/v1/users/me:ensure", b.clerk.UserToken(id), nil)
		if r.status != http.StatusServiceUnavailable {
			t.Errorf("Clerk answers %s: %d %v, want 503", body, r.status, r.body)
		}
		if r := b.call(t, "GET", "/v1/users/me", b.clerk.UserToken(id), nil); r.status != http.StatusNotFound {
			t.Errorf("Clerk answers %s: the user exists: %d %v", body, r.status, r.body)
		}
	}
}
