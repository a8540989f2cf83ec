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
	Issuer   string           `json:"iss,omitempty"`
	Subject  string           `json:"sub,omitempty"`
	Audience jwt.ClaimStrings `json:"aud,omitempty"`
	ID       string           `json:"jti,omitempty"`
	// ExpiresAt, NotBefore and IssuedAt are NumericDates that must be JSON
	// numbers (timeClaim); nil when absent.
	ExpiresAt timeClaim `json:"exp"`
	NotBefore timeClaim `json:"nbf"`
	IssuedAt  timeClaim `json:"iat"`
	// AuthorizedParty is the origin the token was issued to.
	AuthorizedParty string `json:"azp,omitempty"`
	// SessionID is Clerk's session id.
	SessionID string `json:"sid,omitempty"`
	// Email, FirstName and LastName are present when the instance's
	// session token template adds them.
	Email     string `json:"email,omitempty"`
	FirstName string `json:"first_name,omitempty"`
	LastName  string `json:"last_name,omitempty"`
	// OperatorRole is the operator console's role claim ("viewer" or
	// "support"), present when the instance's session token template adds
	// it, e.g. "userd_role": "{{user.public_metadata.userd_role}}".
	OperatorRole string `json:"userd_role,omitempty"`

	// orgClaims are the raw organization and actor claims, read into
	// Organization and Actor once the token is verified.
	orgClaims
	// Organization is the active organization (v2 "o" or v1 org_*
	// claims), or nil when the session has none.
	Organization *ActiveOrganization `json:"-"`
	// Actor is set for an impersonation token (the "act" claim): who is
	// acting as the subject.
	Actor *Actor `json:"-"`
}

// The jwt.Claims methods, for the parser's validation.

func (c *SessionClaims) GetExpirationTime() (*jwt.NumericDate, error) { return c.ExpiresAt.Date, nil }
func (c *SessionClaims) GetNotBefore() (*jwt.NumericDate, error)      { return c.NotBefore.Date, nil }
func (c *SessionClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return c.IssuedAt.Date, nil }
func (c *SessionClaims) GetIssuer() (string, error)                   { return c.Issuer, nil }
func (c *SessionClaims) GetSubject() (string, error)                  { return c.Subject, nil }
func (c *SessionClaims) GetAudience() (jwt.ClaimStrings, error)       { return c.Audience, nil }

// timeClaim is a NumericDate claim (exp, nbf, iat) that must be a JSON
// number, as RFC 7519 §2 defines it: jwt.NumericDate alone also accepts a
// numeric string ("exp": "4102444800") and leaves null as absent.
type timeClaim struct {
	Date *jwt.NumericDate
}

// errTimeClaimNotNumber is a time claim given as anything but a number.
var errTimeClaimNotNumber = errors.New("exp, nbf and iat must be JSON numbers")

func (c *timeClaim) UnmarshalJSON(b []byte) error {
	if len(b) == 0 || b[0] != '-' && (b[0] < '0' || b[0] > '9') {
		return errTimeClaimNotNumber
	}
	var d jwt.NumericDate
	if err := d.UnmarshalJSON(b); err != nil {
		return err
	}
	c.Date = &d
	return nil
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
	// MaxLifetime bounds a token's lifetime (exp - iat) and what it has
	// left (exp - now); zero means DefaultMaxLifetime.
	MaxLifetime time.Duration
}

// DefaultMaxLifetime is the default of SessionConfig.MaxLifetime. Clerk's
// session tokens live 60 s, and so do JWT-template tokens unless their
// template says otherwise (Clerk allows 30 s to 10 years): 5 minutes accepts
// them with room for a template lifetime raised a little, and refuses a
// token minted to live for hours or years, which would stay usable that
// long if it leaked.
const DefaultMaxLifetime = 5 * time.Minute

// Enabled reports whether session tokens can be verified at all.
func (c SessionConfig) Enabled() bool { return c.PEMKey != "" || c.JWKSURL != "" }

// SessionVerifier verifies Clerk session tokens.
type SessionVerifier struct {
	keyfunc     jwt.Keyfunc
	parser      *jwt.Parser
	parties     map[string]bool
	leeway      time.Duration
	maxLifetime time.Duration
	now         func() time.Time

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
	v := &SessionVerifier{leeway: cfg.Leeway, maxLifetime: cfg.MaxLifetime, now: time.Now, verified: map[[sha256.Size]byte]*SessionClaims{}}
	if v.maxLifetime <= 0 {
		v.maxLifetime = DefaultMaxLifetime
	}
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
		// iat in the future beyond the leeway is refused, as Clerk's own
		// verifier (@clerk/backend's assertIssuedAtClaim) refuses it.
		jwt.WithIssuedAt(),
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

// Errors of tokens refused for what their header or lifetime say.
var (
	errCritical        = errors.New(`the token header has "crit": userd understands no JWS extensions (RFC 7515 §4.1.11)`)
	errLifetimeTooLong = errors.New("token lifetime exceeds USERD_JWT_MAX_LIFETIME")
	errTokenType       = errors.New(`the token header's "typ" is not "JWT": not a Clerk session token`)
)

// key refuses tokens that name critical header extensions — RFC 7515
// requires that of a recipient that understands none of them — before any
// key lookup or signature check, then finds the verification key.
//
// A typ other than "JWT" (absent is fine) is refused too, as Clerk's own
// verifier (@clerk/backend's assertHeaderType) does: Clerk's session
// tokens say "JWT", and a token of another type signed by the same
// instance key — an OAuth access token ("at+jwt", RFC 9068) — is not a
// session and must not pass for one.
func (v *SessionVerifier) key(t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		return nil, errCritical
	}
	if typ, ok := t.Header["typ"]; ok && typ != "JWT" {
		return nil, errTokenType
	}
	return v.keyfunc(t)
}

// Verify checks the token's header (no crit; typ absent or "JWT"), signature (RS256 only), time
// claims (JSON numbers; exp required; exp, nbf and iat against the clock),
// lifetime, iss and azp, and returns its claims. A token verified before is
// only checked against the clock again.
func (v *SessionVerifier) Verify(token string) (*SessionClaims, error) {
	return v.verify(token, sha256.Sum256([]byte(token)))
}

// verify is Verify for a token whose SHA-256 digest is key.
func (v *SessionVerifier) verify(token string, key [sha256.Size]byte) (*SessionClaims, error) {
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
	if _, err := v.parser.ParseWithClaims(token, claims, v.key); err != nil {
		return nil, err
	}
	if err := v.checkLifetime(claims, now); err != nil {
		return nil, err
	}
	if v.parties != nil && !v.parties[claims.AuthorizedParty] {
		return nil, fmt.Errorf("authorized party %q is not allowed", claims.AuthorizedParty)
	}
	if !strings.HasPrefix(claims.Subject, "user_") {
		return nil, errors.New("subject is not a Clerk user id")
	}
	org, act, err := claims.normalize()
	if err != nil {
		return nil, err
	}
	claims.Organization, claims.Actor = org, act
	claims.orgClaims = orgClaims{} // read; not kept in the cache
	v.mu.Lock()
	if len(v.verified) >= maxVerified {
		clear(v.verified)
	}
	v.verified[key] = claims
	v.mu.Unlock()
	return claims, nil
}

// checkLifetime refuses a token issued to live longer than the maximum
// (exp - iat), and, whatever its iat says (absent, or in the future), one
// with more than the maximum left to live (exp - now, give or take the
// leeway for clock skew).
func (v *SessionVerifier) checkLifetime(c *SessionClaims, now time.Time) error {
	exp := c.ExpiresAt.Date.Time // the parser requires exp
	if iat := c.IssuedAt.Date; iat != nil {
		if life := exp.Sub(iat.Time); life > v.maxLifetime {
			return fmt.Errorf("%w: issued for %s, at most %s", errLifetimeTooLong, life, v.maxLifetime)
		}
	}
	if left := exp.Sub(now); left > v.maxLifetime+v.leeway {
		return fmt.Errorf("%w: valid for %s more, at most %s", errLifetimeTooLong, left.Round(time.Second), v.maxLifetime)
	}
	return nil
}

// current reports whether verified claims are still within exp and nbf.
func (v *SessionVerifier) current(c *SessionClaims, now time.Time) bool {
	exp, nbf := c.ExpiresAt.Date, c.NotBefore.Date
	if exp == nil || !now.Before(exp.Add(v.leeway)) {
		return false
	}
	return nbf == nil || !now.Before(nbf.Add(-v.leeway))
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
