package clerk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/upstream"
	"github.com/userd/userd/internal/users"
)

// DefaultAPIURL is Clerk's Backend API.
const DefaultAPIURL = "https://api.clerk.com"

// MaxPageSize is the largest page GET /v1/users serves.
const MaxPageSize = 500

// RateLimit is a number of Backend API requests per window.
type RateLimit struct {
	Requests int
	Window   time.Duration
}

func (r RateLimit) String() string { return fmt.Sprintf("%d requests per %s", r.Requests, r.Window) }

// Clerk's Backend API limits requests per instance (that is, per secret
// key): production instances 1000 per 10 s, development instances 100 per
// 10 s (clerk.com/docs, "System limits"). Past them Clerk answers 429 with
// a Retry-After.
var (
	ProductionRateLimit  = RateLimit{Requests: 1000, Window: 10 * time.Second}
	DevelopmentRateLimit = RateLimit{Requests: 100, Window: 10 * time.Second}
)

// InstanceRateLimit is the limit of the instance secretKey belongs to:
// production for "sk_live_" keys, development otherwise.
func InstanceRateLimit(secretKey string) RateLimit {
	if strings.HasPrefix(secretKey, "sk_live_") {
		return ProductionRateLimit
	}
	return DevelopmentRateLimit
}

// MinRateLimitRequests is the smallest budget per window NewAPI accepts.
const MinRateLimitRequests = 10

// APIConfig configures an API client.
type APIConfig struct {
	// URL is the Backend API's base URL (DefaultAPIURL in production).
	URL string
	// SecretKey authenticates ("sk_live_..." or "sk_test_...").
	SecretKey string
	// RateLimit bounds the requests of this client; zero means
	// InstanceRateLimit(SecretKey).
	RateLimit RateLimit
}

// API calls Clerk's Backend API with a secret key, never faster than its
// rate limit allows.
type API struct {
	base    *url.URL
	key     string
	client  *http.Client
	limiter *rate.Limiter
	limit   RateLimit
}

// NewAPI returns a client for the Backend API.
func NewAPI(cfg APIConfig) (*API, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("clerk API URL %q is not an absolute http(s) URL", cfg.URL)
	}
	limit := cfg.RateLimit
	if limit == (RateLimit{}) {
		limit = InstanceRateLimit(cfg.SecretKey)
	}
	if limit.Requests < MinRateLimitRequests || limit.Window <= 0 {
		return nil, fmt.Errorf("clerk API rate limit %s: need at least %d requests per window", limit, MinRateLimitRequests)
	}
	return &API{base: u, key: cfg.SecretKey, client: &http.Client{Timeout: 30 * time.Second},
		limiter: newLimiter(limit), limit: limit}, nil
}

// RateLimit is the limit the client keeps to.
func (a *API) RateLimit() RateLimit { return a.limit }

// newLimiter returns a token bucket that never lets more than 90% of the
// limit through in any window, wherever the window starts: a bucket with
// burst b refilled at r per second lets at most b + r·window through in a
// window, so r = (budget - b) / window. The 10% left over absorbs the
// difference between when a request leaves here and when Clerk counts it,
// and a burst of a tenth of the budget serves a handful of concurrent
// sign-ins without waiting.
func newLimiter(l RateLimit) *rate.Limiter {
	budget := l.Requests * 9 / 10
	burst := max(1, budget/10)
	return rate.NewLimiter(rate.Limit(float64(budget-burst)/l.Window.Seconds()), burst)
}

// StatusError is an answer of the Backend API other than success.
type StatusError struct {
	// Op is what was asked, e.g. "list users".
	Op         string
	StatusCode int
	// Code is Clerk's error code (errors[0].code), if any.
	Code string
	// RetryAfter is the Retry-After of the answer (0 when absent).
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("clerk %s: %d %s", e.Op, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Code != "" {
		msg += " (" + e.Code + ")"
	}
	if e.RetryAfter > 0 {
		msg += fmt.Sprintf(", retry after %s", e.RetryAfter)
	}
	return msg
}

// RetryAfterHint is the Retry-After of the answer (upstream.RetryAfterer).
func (e *StatusError) RetryAfterHint() time.Duration { return e.RetryAfter }

// Temporary reports whether asking again later may succeed: rate limited
// (429) or a failure on Clerk's side (5xx).
func (e *StatusError) Temporary() bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
}

// GetUser fetches one user (GET /v1/users/{id}). A user Clerk does not
// know is apperr NotFound; rate limiting and Clerk outages are Unavailable.
func (a *API) GetUser(ctx context.Context, id string) (users.ClerkUser, error) {
	var u User
	if err := a.get(ctx, "get user", a.base.JoinPath("v1", "users", id), 1<<20, &u); err != nil {
		return users.ClerkUser{}, err
	}
	if u.ID != id {
		return users.ClerkUser{}, apperr.Unavailable(errors.New("clerk get user: the answer is for user " + strconv.Quote(u.ID)))
	}
	return u.Domain(), nil
}

// ListUsers fetches one page of users (GET /v1/users) in creation order,
// oldest first: the first page with startingAfter "", then each next one
// with the id of the last user of the previous page — Clerk's cursor
// pagination, which costs the same on every page (a large offset does not).
// A page shorter than limit is the last one.
func (a *API) ListUsers(ctx context.Context, limit int, startingAfter string) ([]User, error) {
	if limit < 1 || limit > MaxPageSize {
		return nil, fmt.Errorf("clerk list users: limit %d is not between 1 and %d", limit, MaxPageSize)
	}
	endpoint := a.base.JoinPath("v1", "users")
	q := url.Values{}
	q.Set("limit", strconv.Itoa(limit))
	// The cursor requires the created_at ordering; "+" is oldest first, so
	// users created while the listing runs come last and are listed too.
	q.Set("order_by", "+created_at")
	if startingAfter != "" {
		q.Set("starting_after", startingAfter)
	}
	endpoint.RawQuery = q.Encode()
	var page []User
	// A user object is a few KiB; 64 MiB leaves room for large metadata.
	if err := a.get(ctx, "list users", endpoint, 64<<20, &page); err != nil {
		return nil, err
	}
	return page, nil
}

// CountUsers returns how many users the instance has (GET
// /v1/users/count).
func (a *API) CountUsers(ctx context.Context) (int64, error) {
	var c struct {
		TotalCount int64 `json:"total_count"`
	}
	if err := a.get(ctx, "count users", a.base.JoinPath("v1", "users", "count"), 1<<20, &c); err != nil {
		return 0, err
	}
	return c.TotalCount, nil
}

// get sends one GET within the rate limit and decodes the JSON answer into
// out. Errors: apperr NotFound for 404; apperr Unavailable wrapping a
// *StatusError for 429 and 5xx, or wrapping the cause when Clerk could not
// be reached; a *StatusError for anything else (401/403: the secret key is
// wrong — an operator problem).
func (a *API) get(ctx context.Context, op string, endpoint *url.URL, maxBytes int64, out any) error {
	if err := a.limiter.Wait(ctx); err != nil {
		return apperr.Unavailable(fmt.Errorf("clerk %s: waiting for the rate limit (%s): %w", op, a.limit, err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint.String(), nil)
	if err != nil {
		return fmt.Errorf("clerk %s: %w", op, err)
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "userd")
	resp, err := a.client.Do(req)
	if err != nil {
		return apperr.Unavailable(fmt.Errorf("clerk %s: %w", op, err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes))
	if err != nil {
		return apperr.Unavailable(fmt.Errorf("clerk %s: read: %w", op, err))
	}
	if resp.StatusCode != http.StatusOK {
		serr := &StatusError{Op: op, StatusCode: resp.StatusCode, Code: errorCode(body), RetryAfter: upstream.ParseRetryAfter(resp.Header, time.Now())}
		switch {
		case resp.StatusCode == http.StatusNotFound:
			return &apperr.Error{Kind: apperr.KindNotFound, Message: notFoundMessage(op), Err: serr}
		case serr.Temporary():
			return apperr.Unavailable(serr)
		}
		return serr
	}
	if err := json.Unmarshal(body, out); err != nil {
		// A 200 that is not what the Backend API documents is Clerk (or
		// whatever answers at CLERK_API_URL) failing, not the caller's
		// request: unavailable, as a 5xx is.
		return apperr.Unavailable(fmt.Errorf("clerk %s: the answer is not the JSON expected: %w", op, err))
	}
	return nil
}

// errorCode is the code of the first error of Clerk's error body
// ({"errors":[{"message","long_message","code"}]}), if any.
func errorCode(body []byte) string {
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Code
}

// notFoundMessage is the message of a 404 answer to op.
func notFoundMessage(op string) string {
	if strings.Contains(op, "organization") {
		return "organization not found in Clerk"
	}
	return "user not found in Clerk"
}
