package grpcapi

import (
	"context"

	"google.golang.org/grpc/metadata"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/users"
)

// Me names the caller's own user in place of a Clerk user id.
const Me = "me"

// IdempotencyKeyHeader carries the idempotency key as metadata (the REST
// gateway maps the Idempotency-Key HTTP header to it).
const IdempotencyKeyHeader = "idempotency-key"

// errNotFound hides whether another user exists.
var errNotFound = apperr.NotFound("user not found")

// principal returns the authenticated caller. The auth interceptor sets it
// for every UserService call; its absence is a wiring bug.
func principal(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return auth.Principal{}, apperr.Unauthenticated("no credentials")
	}
	return p, nil
}

// ownUser resolves the clerk_user_id a call names. A service may name any
// user (but not "me"); an end user only itself, as "me" or by its id —
// naming anybody else is NOT_FOUND, so the answer says nothing about
// whether that user exists.
func ownUser(ctx context.Context, requested string) (string, error) {
	p, err := principal(ctx)
	if err != nil {
		return "", err
	}
	switch p.Kind {
	case auth.KindService:
		if requested == Me {
			return "", apperr.InvalidArgument(apperr.FieldViolation{
				Field: "clerk_user_id", Description: `"me" needs an end user's session token`,
			})
		}
		return requested, nil
	case auth.KindUser:
		if requested == Me || requested == p.ClerkUserID {
			return p.ClerkUserID, nil
		}
		return "", errNotFound
	}
	return "", apperr.Unauthenticated("no credentials")
}

// servicesOnly refuses end users: credits and plans change only through
// backend services. It returns the service's name, which the ledger
// records.
func servicesOnly(ctx context.Context) (string, error) {
	p, err := service(ctx, "change credits or plans")
	return p.Service, err
}

// service returns the calling service's principal, refusing end users:
// only backend services may do what (e.g. "manage prices").
func service(ctx context.Context, what string) (auth.Principal, error) {
	p, err := principal(ctx)
	if err != nil {
		return auth.Principal{}, err
	}
	if p.Kind != auth.KindService {
		return auth.Principal{}, apperr.PermissionDenied("only backend services may " + what)
	}
	return p, nil
}

// visible hides a user found by id or email from an end user other than
// its owner.
func visible(ctx context.Context, u users.User) error {
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	if p.Kind == auth.KindUser && u.ClerkUserID != p.ClerkUserID {
		return errNotFound
	}
	return nil
}

// idempotencyKey takes the key from the request field or, failing that,
// from the idempotency-key metadata; both set and different is invalid.
func idempotencyKey(ctx context.Context, field string) (string, error) {
	var header string
	if v := metadata.ValueFromIncomingContext(ctx, IdempotencyKeyHeader); len(v) > 0 {
		header = v[0]
	}
	switch {
	case field == "":
		return header, nil
	case header != "" && header != field:
		return "", apperr.InvalidArgument(apperr.FieldViolation{
			Field: "idempotency_key", Description: "differs from the Idempotency-Key header",
		})
	}
	return field, nil
}

// Profiles provides, for an end user signing in before its webhook
// arrived, where its Clerk profile comes from.
type Profiles interface {
	For(p auth.Principal) users.ProfileSource
}
