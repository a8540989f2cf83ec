package auth

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// SessionClaims are the claims userd reads from a Clerk session token.
type SessionClaims struct {
	jwt.RegisteredClaims
	// AuthorizedParty is the origin the token was issued to.
	AuthorizedParty string `json:"azp,omitempty"`
	// SessionID is Clerk's session id.
	SessionID string `json:"sid,omitempty"`
	// Email, FirstName and LastName are present when the instance's
	// session token template adds them.
	Email     string `json:"email,omitempty"`
	FirstName string `json:"first_name,omitempty"`
	LastName  string `json:"last_name,omitempty"`
}

// SessionConfig says how to verify Clerk session tokens.
type SessionConfig struct {
	// PEMKey is the instance's public key (CLERK_JWT_KEY): PEM, or the bare
	// base64 body Clerk's dashboard shows. No network is used.
	PEMKey string
	// JWKSURL is the instance's JWKS (CLERK_JWKS_URL), cached and refreshed
	// hourly and on an unknown kid at most once per MinRefresh.
	JWKSURL    string
	MinRefresh time.Duration
	HTTPClient *http.Client
	// Issuer, when set, must equal the iss claim.
	Issuer string
	// AuthorizedParties, when set, must contain the azp claim.
	AuthorizedParties []string
	// Leeway for exp and nbf.
	Leeway time.Duration
}

// Enabled reports whether session tokens can be verified at all.
func (c SessionConfig) Enabled() bool { return c.PEMKey != "" || c.JWKSURL != "" }

// SessionVerifier verifies Clerk session tokens.
type SessionVerifier struct {
	keyfunc jwt.Keyfunc
	parser  *jwt.Parser
	parties map[string]bool
	leeway  time.Duration
	now     func() time.Time

	// verified remembers tokens whose signature and claims passed, by
	// SHA-256 of the token, until they expire: a frontend sends the same
	// short-lived token with every call for about a minute, and the RSA
	// verification was a fifth of a REST call's CPU (pprof, make bench).
	mu       sync.Mutex
	verified map[[sha256.Size]byte]*SessionClaims
}

// maxVerified bounds the verified-token cache; it is emptied when full.
const maxVerified = 10_000

// NewSessionVerifier builds a verifier; ctx bounds the JWKS refresher.
func NewSessionVerifier(ctx context.Context, cfg SessionConfig) (*SessionVerifier, error) {
	v := &SessionVerifier{leeway: cfg.Leeway, now: time.Now, verified: map[[sha256.Size]byte]*SessionClaims{}}
	switch {
	case cfg.PEMKey != "":
		key, err := parsePublicKey(cfg.PEMKey)
		if err != nil {
			return nil, err
		}
		v.keyfunc = func(*jwt.Token) (any, error) { return key, nil }
	case cfg.JWKSURL != "":
		minRefresh := cfg.MinRefresh
		if minRefresh <= 0 {
			minRefresh = 30 * time.Second
		}
		noErrorFirst := true
		kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
			Client:                    cfg.HTTPClient,
			HTTPTimeout:               10 * time.Second,
			NoErrorReturnFirstHTTPReq: &noErrorFirst, // start even if the JWKS is briefly unreachable
			RefreshInterval:           time.Hour,
			RefreshUnknownKID:         rate.NewLimiter(rate.Every(minRefresh), 1),
			// Bounds the limiter wait and the fetch together. The limiter
			// refuses at once a wait longer than this, so with MinRefresh
			// above it a token with an unknown kid beyond the refresh budget
			// fails immediately; below it, it waits at most MinRefresh.
			RateLimitWaitMax: 10 * time.Second,
			RefreshErrorHandlerFunc: func(string) func(context.Context, error) {
				return func(context.Context, error) {} // surfaced as verification failures
			},
		})
		if err != nil {
			return nil, fmt.Errorf("CLERK_JWKS_URL: %w", err)
		}
		v.keyfunc = kf.Keyfunc
	default:
		return nil, errors.New("session verification needs CLERK_JWT_KEY or CLERK_JWKS_URL")
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{"RS256"}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(func() time.Time { return v.now() }),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	v.parser = jwt.NewParser(opts...)
	if len(cfg.AuthorizedParties) > 0 {
		v.parties = map[string]bool{}
		for _, p := range cfg.AuthorizedParties {
			v.parties[p] = true
		}
	}
	return v, nil
}

// Verify checks the token's signature (RS256 only), exp, nbf, iss and azp
// and returns its claims. A token verified before is only checked against
// the clock again.
func (v *SessionVerifier) Verify(token string) (*SessionClaims, error) {
	key := sha256.Sum256([]byte(token))
	now := v.now()
	v.mu.Lock()
	cached, ok := v.verified[key]
	v.mu.Unlock()
	if ok {
		if v.current(cached, now) {
			return cached, nil
		}
		v.mu.Lock()
		delete(v.verified, key)
		v.mu.Unlock()
	}
	claims := &SessionClaims{}
	if _, err := v.parser.ParseWithClaims(token, claims, v.keyfunc); err != nil {
		return nil, err
	}
	if v.parties != nil && !v.parties[claims.AuthorizedParty] {
		return nil, fmt.Errorf("authorized party %q is not allowed", claims.AuthorizedParty)
	}
	if !strings.HasPrefix(claims.Subject, "user_") {
		return nil, errors.New("subject is not a Clerk user id")
	}
	v.mu.Lock()
	if len(v.verified) >= maxVerified {
		clear(v.verified)
	}
	v.verified[key] = claims
	v.mu.Unlock()
	return claims, nil
}

// current reports whether verified claims are still within exp and nbf.
func (v *SessionVerifier) current(c *SessionClaims, now time.Time) bool {
	if c.ExpiresAt == nil || !now.Before(c.ExpiresAt.Add(v.leeway)) {
		return false
	}
	return c.NotBefore == nil || !now.Before(c.NotBefore.Add(-v.leeway))
}

// parsePublicKey reads an RSA public key in PEM, or the bare base64 body.
func parsePublicKey(s string) (*rsa.PublicKey, error) {
	s = strings.TrimSpace(strings.ReplaceAll(s, `\n`, "\n"))
	if !strings.HasPrefix(s, "-----BEGIN") {
		s = "-----BEGIN PUBLIC KEY-----\n" + s + "\n-----END PUBLIC KEY-----"
	}
	key, err := jwt.ParseRSAPublicKeyFromPEM([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("CLERK_JWT_KEY is not an RSA public key in PEM: %w", err)
	}
	return key, nil
}
