package clerkhook

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/userd/userd/internal/clerk"
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
		var cu clerk.User
		if err := json.Unmarshal(env.Data, &cu); err != nil {
			return event{}, fmt.Errorf("%w: %s data is not a user: %v", errBadPayload, env.Type, err)
		}
		u := cu.Domain()
		ev.User = &u
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
