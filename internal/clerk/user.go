// Package clerk holds what userd knows of Clerk's wire formats: the User
// object (as webhooks and the Backend API send it) and a small Backend API
// client for fetching one user. Only Clerk's remote API is ever faked in
// tests, with this same format.
package clerk

import (
	"github.com/userd/userd/internal/users"
)

// User is the part of Clerk's User object userd reads. Unknown fields are
// ignored: Clerk adds fields over time.
type User struct {
	ID                    string         `json:"id"`
	PrimaryEmailAddressID *string        `json:"primary_email_address_id"`
	EmailAddresses        []EmailAddress `json:"email_addresses"`
	FirstName             *string        `json:"first_name"`
	LastName              *string        `json:"last_name"`
	ImageURL              string         `json:"image_url"`
	UpdatedAt             int64          `json:"updated_at"`
}

// EmailAddress is one of a user's addresses.
type EmailAddress struct {
	ID           string `json:"id"`
	EmailAddress string `json:"email_address"`
}

// PrimaryEmail is the address whose id is primary_email_address_id — not
// the first one in the list — or "" when the user has none.
func (u User) PrimaryEmail() string {
	if u.PrimaryEmailAddressID == nil {
		return ""
	}
	for _, e := range u.EmailAddresses {
		if e.ID == *u.PrimaryEmailAddressID {
			return e.EmailAddress
		}
	}
	return ""
}

// Domain returns the state the domain mirrors, versioned by UpdatedAt.
func (u User) Domain() users.ClerkUser {
	return users.ClerkUser{
		ID:        u.ID,
		Email:     u.PrimaryEmail(),
		FirstName: orEmpty(u.FirstName),
		LastName:  orEmpty(u.LastName),
		ImageURL:  u.ImageURL,
		UpdatedAt: u.UpdatedAt,
	}
}

// orEmpty reads Clerk's nullable names: null is no name.
func orEmpty(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
