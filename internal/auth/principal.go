// Package auth authenticates callers: backend services by named bearer
// tokens, end users by Clerk session JWTs (RS256, verified with golang-jwt
// against a PEM key or a cached JWKS). Transports call Authenticate and put
// the Principal in the context; what a principal may do is decided by the
// transports, the same way for gRPC and REST.
package auth

import (
	"context"
	"strings"
	"time"
)

// Kind is the kind of caller.
type Kind int

const (
	// KindService is a backend service with a service token.
	KindService Kind = iota + 1
	// KindUser is an end user with a Clerk session token.
	KindUser
)

// Principal is an authenticated caller.
type Principal struct {
	Kind Kind
	// Service is the configured name of a service token.
	Service string
	// ClerkUserID is the verified subject of a session token.
	ClerkUserID string
	// Session is the verified session token's claims (KindUser only).
	Session *SessionClaims
	// Organization is the session's active organization (v2 "o" or v1
	// org_* claims), or nil when none is active (KindUser only).
	Organization *ActiveOrganization
	// Actor is set when the session token is an impersonation token
	// (Clerk's "act" claim): someone else acts as ClerkUserID. Such a
	// principal may not act on organization accounts.
	Actor *Actor
	// Expires is when the credentials stop being accepted: a session
	// token's exp plus the leeway (zero for services, whose tokens do not
	// expire).
	Expires time.Time
}

// Impersonated reports whether the credentials are an impersonation
// token.
func (p Principal) Impersonated() bool { return p.Actor != nil }

// ActiveOrganizationID is the session's active organization's id, or "".
func (p Principal) ActiveOrganizationID() string {
	if p.Organization == nil {
		return ""
	}
	return p.Organization.ID
}

// Name identifies the principal in logs and metrics; it never contains a
// token.
func (p Principal) Name() string {
	switch p.Kind {
	case KindService:
		return "service:" + p.Service
	case KindUser:
		return "user:" + p.ClerkUserID
	}
	return ""
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal of ctx.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// bearer extracts the token of an "Authorization: Bearer <token>" value.
func bearer(header string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
