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
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// DefaultAPIURL is Clerk's Backend API.
const DefaultAPIURL = "https://api.clerk.com"

// API calls Clerk's Backend API with a secret key.
type API struct {
	base   *url.URL
	key    string
	client *http.Client
}

// NewAPI returns a client for the Backend API at baseURL (DefaultAPIURL in
// production) authenticated with secretKey ("sk_...").
func NewAPI(baseURL, secretKey string) (*API, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("clerk API URL %q is not an absolute http(s) URL", baseURL)
	}
	return &API{base: u, key: secretKey, client: &http.Client{Timeout: 10 * time.Second}}, nil
}

// GetUser fetches one user (GET /v1/users/{id}). A user Clerk does not
// know is apperr NotFound; rate limiting and Clerk outages are Unavailable.
func (a *API) GetUser(ctx context.Context, id string) (users.ClerkUser, error) {
	endpoint := a.base.JoinPath("v1", "users", id)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint.String(), nil)
	if err != nil {
		return users.ClerkUser{}, fmt.Errorf("clerk get user: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	req.Header.Set("Accept", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return users.ClerkUser{}, apperr.Unavailable(fmt.Errorf("clerk get user: %w", err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return users.ClerkUser{}, apperr.Unavailable(fmt.Errorf("clerk get user: read: %w", err))
	}
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusNotFound:
		return users.ClerkUser{}, apperr.NotFound("user not found in Clerk")
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return users.ClerkUser{}, apperr.Unavailable(fmt.Errorf("clerk get user: %s (retry-after %q)",
			resp.Status, resp.Header.Get("Retry-After")))
	default:
		// 401/403 mean userd's secret key is wrong: an operator problem.
		return users.ClerkUser{}, fmt.Errorf("clerk get user: unexpected %s", resp.Status)
	}
	var u User
	if err := json.Unmarshal(body, &u); err != nil {
		return users.ClerkUser{}, fmt.Errorf("clerk get user: decode: %w", err)
	}
	if u.ID != id {
		return users.ClerkUser{}, errors.New("clerk get user: response is for user " + strconv.Quote(u.ID))
	}
	return u.Domain(), nil
}
