package clerk

import (
	"context"

	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/users"
)

// claimsVersion versions a profile taken from session token claims: above
// "unknown" (0), below any real Clerk updated_at, so that the user's
// webhook events, which carry the full profile, always replace it.
const claimsVersion = 1

// Profiles finds a signing-in end user's profile in Clerk: the email claim
// of its session token when the instance's token template adds one,
// otherwise the Backend API (when a secret key is configured), otherwise
// nothing but the id (the webhook fills in the rest).
type Profiles struct {
	API *API // nil without CLERK_SECRET_KEY
}

// For returns the profile source of p.
func (ps Profiles) For(p auth.Principal) users.ProfileSource {
	return func(ctx context.Context) (users.ClerkUser, error) {
		claims := p.Session
		switch {
		case claims != nil && claims.Email != "":
			return users.ClerkUser{
				ID: p.ClerkUserID, Email: claims.Email, FirstName: claims.FirstName, LastName: claims.LastName,
				UpdatedAt: claimsVersion,
			}, nil
		case ps.API != nil:
			return ps.API.GetUser(ctx, p.ClerkUserID)
		}
		return users.ClerkUser{ID: p.ClerkUserID, UpdatedAt: claimsVersion}, nil
	}
}
