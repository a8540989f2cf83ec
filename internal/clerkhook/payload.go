package clerkhook

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/userd/userd/internal/users"
)

// envelope is Clerk's webhook event: {type, object:"event", timestamp,
// instance_id, data}. Unknown fields are ignored: Clerk adds fields over
// time.
type envelope struct {
	Type       string          `json:"type"`
	Object     string          `json:"object"`
	InstanceID string          `json:"instance_id"`
	Data       json.RawMessage `json:"data"`
}

// clerkUser is the part of Clerk's User object userd reads.
type clerkUser struct {
	ID                    string  `json:"id"`
	PrimaryEmailAddressID *string `json:"primary_email_address_id"`
	EmailAddresses        []struct {
		ID           string `json:"id"`
		EmailAddress string `json:"email_address"`
	} `json:"email_addresses"`
	FirstName *string `json:"first_name"`
	LastName  *string `json:"last_name"`
	ImageURL  string  `json:"image_url"`
	UpdatedAt int64   `json:"updated_at"`
}

// deletedObject is the data of user.deleted.
type deletedObject struct {
	ID      string `json:"id"`
	Deleted bool   `json:"deleted"`
}

// event is a parsed delivery.
type event struct {
	Type string
	// User is set for user.created and user.updated.
	User *users.ClerkUser
	// DeletedID is set for user.deleted.
	DeletedID string
}

// Event types userd applies.
const (
	typeUserCreated = "user.created"
	typeUserUpdated = "user.updated"
	typeUserDeleted = "user.deleted"
)

// errBadPayload marks payloads that can never be applied.
var errBadPayload = errors.New("bad payload")

// parseEvent decodes a verified body. Types other than user.* return an
// event with only Type set.
func parseEvent(body []byte) (event, error) {
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return event{}, fmt.Errorf("%w: not a JSON event: %v", errBadPayload, err)
	}
	if env.Object != "event" || env.Type == "" {
		return event{}, fmt.Errorf("%w: not a Clerk event (object %q, type %q)", errBadPayload, env.Object, env.Type)
	}
	ev := event{Type: env.Type}
	switch env.Type {
	case typeUserCreated, typeUserUpdated:
		var cu clerkUser
		if err := json.Unmarshal(env.Data, &cu); err != nil {
			return event{}, fmt.Errorf("%w: %s data is not a user: %v", errBadPayload, env.Type, err)
		}
		u := &users.ClerkUser{
			ID:        cu.ID,
			Email:     cu.primaryEmail(),
			FirstName: deref(cu.FirstName),
			LastName:  deref(cu.LastName),
			ImageURL:  cu.ImageURL,
			UpdatedAt: cu.UpdatedAt,
		}
		ev.User = u
	case typeUserDeleted:
		var d deletedObject
		if err := json.Unmarshal(env.Data, &d); err != nil {
			return event{}, fmt.Errorf("%w: user.deleted data is not a deleted object: %v", errBadPayload, err)
		}
		if !d.Deleted {
			return event{}, fmt.Errorf("%w: user.deleted with deleted=false", errBadPayload)
		}
		ev.DeletedID = d.ID
	}
	return ev, nil
}

// primaryEmail is the address whose id is primary_email_address_id — not
// the first one in the list — or "" when the user has none.
func (cu clerkUser) primaryEmail() string {
	if cu.PrimaryEmailAddressID == nil {
		return ""
	}
	for _, e := range cu.EmailAddresses {
		if e.ID == *cu.PrimaryEmailAddressID {
			return e.EmailAddress
		}
	}
	return ""
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
