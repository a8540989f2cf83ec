package auth

import (
	"crypto/sha256"
	"errors"
	"log/slog"

	"github.com/golang-jwt/jwt/v5"

	"github.com/userd/userd/internal/apperr"
)

// Authenticator turns an Authorization header into a Principal.
type Authenticator struct {
	services ServiceTokens
	sessions *SessionVerifier // nil: end users cannot authenticate
	log      *slog.Logger
}

// NewAuthenticator combines service tokens and, if not nil, a session
// verifier. With neither, every call is refused.
func NewAuthenticator(services ServiceTokens, sessions *SessionVerifier, log *slog.Logger) *Authenticator {
	if services.Len() == 0 && sessions == nil {
		log.Warn("no credentials are configured: every API call is refused with UNAUTHENTICATED; " +
			"set USERD_SERVICE_TOKENS (name=token,...) for backend services and CLERK_JWKS_URL or CLERK_JWT_KEY for end users")
	}
	return &Authenticator{services: services, sessions: sessions, log: log}
}

// Authenticate verifies the value of an Authorization header.
func (a *Authenticator) Authenticate(authorization string) (Principal, error) {
	if authorization == "" {
		return Principal{}, apperr.Unauthenticated("missing Authorization: Bearer <token>")
	}
	token, ok := bearer(authorization)
	if !ok {
		return Principal{}, apperr.Unauthenticated("Authorization must be \"Bearer <token>\"")
	}
	// One digest serves both: service tokens are kept as digests, and
	// verified session tokens are cached by theirs.
	digest := sha256.Sum256([]byte(token))
	if name, ok := a.services.matchDigest(digest); ok {
		return Principal{Kind: KindService, Service: name}, nil
	}
	if a.sessions == nil {
		return Principal{}, apperr.Unauthenticated("invalid token")
	}
	claims, err := a.sessions.verify(token, digest)
	if err != nil {
		a.log.Debug("session token rejected", "err", err)
		msg := "invalid token"
		switch {
		case errors.Is(err, jwt.ErrTokenExpired):
			msg = "token expired"
		case errors.Is(err, jwt.ErrTokenNotValidYet):
			msg = "token not valid yet"
		case errors.Is(err, errLifetimeTooLong):
			msg = "token lifetime too long"
		case errors.Is(err, errOrgClaims):
			msg = "token's organization claims are malformed"
		case errors.Is(err, errActorClaim):
			msg = `token's "act" claim is malformed`
		}
		return Principal{}, apperr.Unauthenticated(msg)
	}
	return Principal{
		Kind: KindUser, ClerkUserID: claims.Subject, Session: claims,
		Organization: claims.Organization, Actor: claims.Actor,
		Expires: claims.ExpiresAt.Date.Add(a.sessions.leeway), // the parser requires exp
	}, nil
}
