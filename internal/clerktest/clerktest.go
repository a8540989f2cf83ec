// Package clerktest fakes Clerk's remote APIs for tests — the only things
// userd's tests fake: a JWKS endpoint and the Backend API's GET
// /v1/users/{id}, GET /v1/users (with Clerk's cursor pagination), GET
// /v1/users/count and the organization endpoints (orgs.go), speaking Clerk's wire format, plus RS256 session tokens
// signed with keys made in the test. The Backend API can enforce a rate
// limit as Clerk does (429 with Retry-After), be made to fail on purpose,
// and records when each request arrived.
package clerktest

import (
	"cmp"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math"
	"math/big"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/userd/userd/internal/clerkhook"
)

// SecretKey is the Backend API key the fake accepts.
const SecretKey = "sk_test_clerktest_secret"

// Party is the azp of tokens minted by Token unless overridden.
const Party = "https://app.example.com"

// Clerk is a fake Clerk instance.
type Clerk struct {
	t      testing.TB
	server *httptest.Server

	mu   sync.Mutex
	keys map[string]*rsa.PrivateKey // published in the JWKS
	// users are the Backend API's users by id, deleted ones included
	// (a cursor may name one); order lists them by creation, oldest first,
	// and is rebuilt when sorted is false.
	users  map[string]*user
	order  []*user
	sorted bool
	// limit, when set, is enforced on the Backend API as Clerk does.
	limit *rateWindow
	// faults answer Backend API requests on purpose (InjectFaults).
	faults     []Fault
	faultEvery int
	faultCount int
	requests   []Request

	// IgnoreCursor makes GET /v1/users ignore starting_after, as an API
	// without cursor pagination would.
	IgnoreCursor atomic.Bool
	// CycleAfter, when > 0, makes GET /v1/users hostile: a cursor naming
	// the CycleAfter-th user (in listing order) or a later one is treated
	// as no cursor, so the pages cycle A → B → ... → A for ever.
	CycleAfter atomic.Int64
	// Endless makes GET /v1/users hostile: past the last user it serves
	// made-up users (user_endless<n>), never a short page.
	Endless atomic.Bool

	// orgs and memberships are the Backend API's organizations and
	// memberships by id, deleted ones included (see orgs.go).
	orgs        map[string]*org
	memberships map[string]*membership
	// OrganizationsDisabled makes the organization endpoints answer as an
	// instance without the organizations feature does (403
	// organization_not_enabled_in_instance).
	OrganizationsDisabled atomic.Bool
	// IgnoreOffset makes GET /v1/organizations ignore offset.
	IgnoreOffset atomic.Bool

	// JWKSHits and APIHits count requests to each endpoint.
	JWKSHits atomic.Int64
	APIHits  atomic.Int64
}

// user is one user of the fake instance.
type user struct {
	id        string
	createdAt int64 // ms
	state     clerkhook.SampleUser
	body      []byte
	deleted   bool
}

// New starts a fake Clerk with one signing key, "kid-1".
func New(t testing.TB) *Clerk {
	t.Helper()
	c := &Clerk{t: t, keys: map[string]*rsa.PrivateKey{}, users: map[string]*user{},
		orgs: map[string]*org{}, memberships: map[string]*membership{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/jwks.json", c.serveJWKS)
	mux.HandleFunc("GET /v1/users/{id}", c.backend(c.serveUser))
	mux.HandleFunc("GET /v1/users/count", c.backend(c.serveCount))
	mux.HandleFunc("GET /v1/users", c.backend(c.serveList))
	mux.HandleFunc("GET /v1/organizations", c.backend(c.serveOrgList))
	mux.HandleFunc("GET /v1/organizations/{id}", c.backend(c.serveOrg))
	mux.HandleFunc("GET /v1/organizations/{id}/memberships", c.backend(c.serveMembershipList))
	c.server = httptest.NewServer(mux)
	t.Cleanup(c.server.Close)
	c.AddKey("kid-1")
	return c
}

// Issuer is the iss of minted tokens (the fake's Frontend API URL).
func (c *Clerk) Issuer() string { return c.server.URL }

// JWKSURL is the fake's JWKS.
func (c *Clerk) JWKSURL() string { return c.server.URL + "/.well-known/jwks.json" }

// APIURL is the fake Backend API's base URL.
func (c *Clerk) APIURL() string { return c.server.URL }

// AddKey creates a signing key and publishes it under kid.
func (c *Clerk) AddKey(kid string) *rsa.PrivateKey {
	key := NewKey(c.t)
	c.mu.Lock()
	c.keys[kid] = key
	c.mu.Unlock()
	return key
}

// Key returns the private key published under kid.
func (c *Clerk) Key(kid string) *rsa.PrivateKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keys[kid]
}

// PublicKeyPEM is kid's public key as CLERK_JWT_KEY expects it.
func (c *Clerk) PublicKeyPEM(kid string) string {
	der, err := x509.MarshalPKIXPublicKey(&c.Key(kid).PublicKey)
	if err != nil {
		c.t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// NewKey makes an RSA key for signing tokens.
func NewKey(t testing.TB) *rsa.PrivateKey {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// SetUser makes the Backend API know a user, shaped as Clerk sends it: a
// new one is created at u.UpdatedAt, a known one gets the new state (and
// keeps its creation time and place in the listing). A deleted user cannot
// come back: Clerk never reuses ids.
func (c *Clerk) SetUser(u clerkhook.SampleUser) {
	c.setUser(u, UserJSON(c.t, u))
}

func (c *Clerk) setUser(u clerkhook.SampleUser, body []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.users[u.ID]; ok {
		if old.deleted {
			c.t.Errorf("clerktest: SetUser(%s) after DeleteUser", u.ID)
			return
		}
		old.body, old.state = body, u
		return
	}
	c.users[u.ID] = &user{id: u.ID, createdAt: u.UpdatedAt.UnixMilli(), state: u, body: body}
	c.sorted = false
}

// UserJSON is u as Clerk's Backend API sends a User object.
func UserJSON(t testing.TB, u clerkhook.SampleUser) []byte {
	var event struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(clerkhook.SampleEvent("user.updated", u), &event); err != nil {
		t.Fatal(err)
	}
	return event.Data
}

// DeleteUser deletes a user: GET answers 404 and the listing skips it.
func (c *Clerk) DeleteUser(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if u, ok := c.users[id]; ok {
		u.deleted = true
	}
}

// AddUsers creates n users user_<prefix><i> (i from 0), created one
// millisecond apart from start, with an email, names and an image, and
// returns them as set. prefix is letters and digits.
func (c *Clerk) AddUsers(prefix string, n int, start time.Time) []clerkhook.SampleUser {
	// Thousands of users are made from one sample body by replacing its
	// values, which are plain ASCII here: encoding each through
	// clerkhook.SampleEvent takes seconds under the race detector.
	tmpl := clerkhook.SampleUser{ID: "user_TMPLID", Email: "tmplemail@example.com", FirstName: "TMPLFIRST",
		LastName: "TMPLLAST", ImageURL: "https://img.example.com/TMPLIMG.png", UpdatedAt: time.UnixMilli(1_111_111_111_111)}
	body := UserJSON(c.t, tmpl)
	out := make([]clerkhook.SampleUser, n)
	for i := range out {
		u := clerkhook.SampleUser{
			ID:        fmt.Sprintf("user_%s%06d", prefix, i),
			Email:     fmt.Sprintf("%s%06d@example.com", prefix, i),
			FirstName: fmt.Sprintf("First%d", i),
			LastName:  fmt.Sprintf("Last%d", i),
			ImageURL:  fmt.Sprintf("https://img.example.com/%s%d.png", prefix, i),
			UpdatedAt: start.Add(time.Duration(i) * time.Millisecond),
		}
		b := strings.NewReplacer(
			tmpl.ID, u.ID, "tmplemail", strings.TrimSuffix(u.Email, "@example.com"),
			tmpl.FirstName, u.FirstName, tmpl.LastName, u.LastName, "TMPLIMG", strings.TrimSuffix(strings.TrimPrefix(u.ImageURL, "https://img.example.com/"), ".png"),
			"1111111111111", strconv.FormatInt(u.UpdatedAt.UnixMilli(), 10),
		).Replace(string(body))
		c.setUser(u, []byte(b))
		out[i] = u
	}
	return out
}

// LiveStates returns the state of every user not deleted.
func (c *Clerk) LiveStates() []clerkhook.SampleUser {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []clerkhook.SampleUser
	for _, u := range c.ordered() {
		if !u.deleted {
			out = append(out, u.state)
		}
	}
	return out
}

// LiveUsers returns the ids of the users not deleted, in creation order.
func (c *Clerk) LiveUsers() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for _, u := range c.ordered() {
		if !u.deleted {
			ids = append(ids, u.id)
		}
	}
	return ids
}

// UserState returns the JSON of a live user, and whether there is one.
func (c *Clerk) UserState(id string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	u, ok := c.users[id]
	if !ok || u.deleted {
		return nil, false
	}
	return u.body, true
}

// ordered returns the users by creation (then id), oldest first. c.mu is
// held.
func (c *Clerk) ordered() []*user {
	if !c.sorted {
		c.order = c.order[:0]
		for _, u := range c.users {
			c.order = append(c.order, u)
		}
		slices.SortFunc(c.order, func(a, b *user) int {
			if a.createdAt != b.createdAt {
				return cmp.Compare(a.createdAt, b.createdAt)
			}
			return strings.Compare(a.id, b.id)
		})
		c.sorted = true
	}
	return c.order
}

// Claims returns the claims of a valid session token for sub.
func (c *Clerk) Claims(sub string) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"iss": c.Issuer(), "sub": sub, "azp": Party, "sid": "sess_" + sub,
		"iat": now.Unix(), "nbf": now.Add(-5 * time.Second).Unix(), "exp": now.Add(time.Minute).Unix(),
	}
}

// Token signs claims with kid's key (RS256).
func (c *Clerk) Token(claims jwt.MapClaims, kid string) string {
	return Sign(c.t, claims, kid, c.Key(kid))
}

// UserToken is a valid session token for sub.
func (c *Clerk) UserToken(sub string) string { return c.Token(c.Claims(sub), "kid-1") }

// Sign signs claims with key under kid (RS256).
func Sign(t testing.TB, claims jwt.MapClaims, kid string, key *rsa.PrivateKey) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (c *Clerk) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	c.JWKSHits.Add(1)
	c.mu.Lock()
	keys := []map[string]string{}
	for kid, k := range c.keys {
		keys = append(keys, map[string]string{
			"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256",
			"n": base64.RawURLEncoding.EncodeToString(k.N.Bytes()),
			"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes()),
		})
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
}

// Fault is an answer the Backend API gives on purpose.
type Fault struct {
	Status int
	// RetryAfter is sent as Retry-After (seconds) when > 0.
	RetryAfter int
	// Body, when set, is sent as it is instead of Clerk's error body
	// (e.g. garbage with Status 200).
	Body string
}

// InjectFaults makes every every-th Backend API request from now on answer
// the next of faults, until they are used up.
func (c *Clerk) InjectFaults(every int, faults ...Fault) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults, c.faultEvery, c.faultCount = append(c.faults, faults...), max(every, 1), 0
}

// ClearFaults drops the faults not served yet.
func (c *Clerk) ClearFaults() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = nil
}

// SetRateLimit makes the Backend API answer 429 with a Retry-After, as
// Clerk does, to a request that would make more than requests arrive
// within any window.
func (c *Clerk) SetRateLimit(requests int, window time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.limit = &rateWindow{requests: requests, window: window}
}

// Request is one Backend API request as the fake saw it.
type Request struct {
	At     time.Time
	Path   string
	Status int
	// Injected is set for the answers of InjectFaults, RateLimited for the
	// 429s of SetRateLimit.
	Injected, RateLimited bool
}

// Requests returns the Backend API requests so far, in arrival order.
func (c *Clerk) Requests() []Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.requests)
}

// PeakRequests is the most requests that arrived within any window.
func PeakRequests(reqs []Request, window time.Duration) int {
	peak, first := 0, 0
	for i, r := range reqs {
		for r.At.Sub(reqs[first].At) >= window {
			first++
		}
		peak = max(peak, i-first+1)
	}
	return peak
}

// rateWindow is a sliding-window limit.
type rateWindow struct {
	requests int
	window   time.Duration
	arrivals []time.Time
}

// admit records a request at now, or says how long until it would be
// admitted.
func (l *rateWindow) admit(now time.Time) (time.Duration, bool) {
	for len(l.arrivals) > 0 && now.Sub(l.arrivals[0]) >= l.window {
		l.arrivals = l.arrivals[1:]
	}
	if len(l.arrivals) >= l.requests {
		return l.arrivals[0].Add(l.window).Sub(now), false
	}
	l.arrivals = append(l.arrivals, now)
	return 0, true
}

// backend wraps a Backend API handler: authentication, the rate limit,
// injected faults, and the request record.
func (c *Clerk) backend(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c.APIHits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		now := time.Now()
		rec := Request{At: now, Path: r.URL.Path}
		c.mu.Lock()
		var fault *Fault
		if c.limit != nil {
			if wait, ok := c.limit.admit(now); !ok {
				fault = &Fault{Status: http.StatusTooManyRequests, RetryAfter: int(math.Ceil(wait.Seconds()))}
				rec.RateLimited = true
			}
		}
		if fault == nil && len(c.faults) > 0 {
			if c.faultCount++; c.faultCount%c.faultEvery == 0 {
				fault = &c.faults[0]
				c.faults = c.faults[1:]
				rec.Injected = true
			}
		}
		if fault != nil {
			rec.Status = fault.Status
		}
		// Otherwise the status is set once the handler answered.
		c.requests = append(c.requests, rec)
		idx := len(c.requests) - 1
		c.mu.Unlock()
		if fault != nil {
			if fault.RetryAfter > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(fault.RetryAfter))
			}
			if fault.Body != "" {
				w.WriteHeader(fault.Status)
				_, _ = w.Write([]byte(fault.Body))
				return
			}
			writeError(w, fault.Status, "injected", http.StatusText(fault.Status))
			return
		}
		if !strings.EqualFold(r.Header.Get("Authorization"), "Bearer "+SecretKey) {
			c.setStatus(idx, http.StatusUnauthorized)
			writeError(w, http.StatusUnauthorized, "authentication_invalid", "Unauthorized")
			return
		}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h(sw, r)
		c.setStatus(idx, sw.status)
	}
}

func (c *Clerk) setStatus(i, status int) {
	c.mu.Lock()
	c.requests[i].Status = status
	c.mu.Unlock()
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"message": msg, "long_message": msg, "code": code}}})
}

func (c *Clerk) serveUser(w http.ResponseWriter, r *http.Request) {
	body, ok := c.UserState(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, "resource_not_found", "not found")
		return
	}
	_, _ = w.Write(body)
}

func (c *Clerk) serveCount(w http.ResponseWriter, _ *http.Request) {
	n := len(c.LiveUsers())
	_ = json.NewEncoder(w).Encode(map[string]any{"object": "total_count", "total_count": n})
}

// serveList is GET /v1/users as Clerk's Backend API documents it: limit
// 1–500 (default 10), offset, order_by (default -created_at) and the
// cursor starting_after, which needs a created_at ordering and no offset
// (else 422). It answers a JSON array of users.
func (c *Clerk) serveList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, offset := 10, 0
	var err error
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 500 {
			writeError(w, http.StatusUnprocessableEntity, "form_param_value_invalid", "limit must be between 1 and 500")
			return
		}
	}
	if s := q.Get("offset"); s != "" {
		if offset, err = strconv.Atoi(s); err != nil || offset < 0 {
			writeError(w, http.StatusUnprocessableEntity, "form_param_value_invalid", "offset must be >= 0")
			return
		}
	}
	orderBy := q.Get("order_by")
	if orderBy == "" {
		orderBy = "-created_at"
	}
	descending := strings.HasPrefix(orderBy, "-")
	if f := strings.TrimLeft(orderBy, "+-"); f != "created_at" {
		writeError(w, http.StatusUnprocessableEntity, "form_param_value_invalid", "the fake orders by created_at only")
		return
	}
	cursor := q.Get("starting_after")
	if c.IgnoreCursor.Load() {
		cursor = ""
	}
	if cursor != "" && offset != 0 {
		writeError(w, http.StatusUnprocessableEntity, "form_param_value_invalid", "starting_after cannot be combined with offset")
		return
	}
	c.mu.Lock()
	all := c.ordered()
	if descending {
		all = slices.Clone(all)
		slices.Reverse(all)
	}
	start, endless := 0, c.Endless.Load()
	made := 0 // the next made-up user of an endless listing
	if n, ok := strings.CutPrefix(cursor, "user_endless"); ok && endless {
		made, _ = strconv.Atoi(n)
		made++
		start, cursor = len(all), ""
	}
	if cursor != "" {
		i := slices.IndexFunc(all, func(u *user) bool { return u.id == cursor })
		switch n := c.CycleAfter.Load(); {
		case n > 0 && int64(i+1) >= n:
			// Back to the first page.
		case i < 0:
			c.mu.Unlock()
			writeError(w, http.StatusUnprocessableEntity, "form_param_value_invalid", "starting_after names no user")
			return
		default:
			start = i + 1
		}
	}
	var page [][]byte
	skipped := 0
	for _, u := range all[start:] {
		if u.deleted {
			continue
		}
		if skipped < offset {
			skipped++
			continue
		}
		page = append(page, u.body)
		if len(page) == limit {
			break
		}
	}
	c.mu.Unlock()
	if endless && len(page) < limit {
		tmpl := string(UserJSON(c.t, clerkhook.SampleUser{ID: "user_TMPLID", UpdatedAt: time.UnixMilli(1_700_000_000_000)}))
		for ; len(page) < limit; made++ {
			page = append(page, []byte(strings.Replace(tmpl, "user_TMPLID", fmt.Sprintf("user_endless%d", made), 1)))
		}
	}
	_, _ = w.Write([]byte("["))
	for i, b := range page {
		if i > 0 {
			_, _ = w.Write([]byte(","))
		}
		_, _ = w.Write(b)
	}
	_, _ = w.Write([]byte("]"))
}
