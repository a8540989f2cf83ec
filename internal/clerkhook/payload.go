package clerkhook

import (
	"errors"
	"fmt"
	"strings"

	// encoding/json's semantics (case-insensitive names, unknown fields
	// ignored, invalid UTF-8 replaced, first type error reported) on the
	// v2 engine — the code Go's own encoding/json runs under
	// GOEXPERIMENT=jsonv2 — which scans the body once where v1 validates
	// it, skips the data, then validates and decodes the data again. The
	// parse was the largest part of a delivery's CPU (see
	// BenchmarkParseEvent).
	json "github.com/go-json-experiment/json/v1"

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

// sessionObject is the part of the data of session.* events userd reads:
// Clerk embeds the session's full User object.
type sessionObject struct {
	UserID string      `json:"user_id"`
	User   *clerk.User `json:"user"`
}

// event is a parsed delivery.
type event struct {
	Type string
	// User is set for user.created and user.updated, and for session.*
	// events that embed their user.
	User *users.ClerkUser
	// DeletedID is set for user.deleted and organization.deleted.
	DeletedID string
	// Org is set for organization.created and organization.updated.
	Org *users.ClerkOrganization
	// Membership is set for organizationMembership.* (deleted too).
	Membership *users.ClerkMembership
}

// Event types userd applies.
const (
	typeUserCreated = "user.created"
	typeUserUpdated = "user.updated"
	typeUserDeleted = "user.deleted"

	typeOrgCreated = "organization.created"
	typeOrgUpdated = "organization.updated"
	typeOrgDeleted = "organization.deleted"

	typeMembershipCreated = "organizationMembership.created"
	typeMembershipUpdated = "organizationMembership.updated"
	typeMembershipDeleted = "organizationMembership.deleted"
	// sessionTypePrefix starts session.created, session.pending,
	// session.ended, session.removed and session.revoked: each embeds the
	// session's user, so a user whose user.created was lost appears at
	// its next sign-in.
	sessionTypePrefix = "session."
)

// errBadPayload marks payloads that can never be applied.
var errBadPayload = errors.New("bad payload")

// parseEvent decodes a verified body. Other types, and session.* events
// without an embedded user (with a version), return an event with only
// Type set: acknowledged and ignored.
func parseEvent(body []byte) (event, error) {
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return event{}, fmt.Errorf("%w: not a JSON event: %v", errBadPayload, err)
	}
	if env.Object != "event" || env.Type == "" {
		return event{}, fmt.Errorf("%w: not a Clerk event (object %q, type %q)", errBadPayload, env.Object, env.Type)
	}
	ev := event{Type: env.Type}
	switch {
	case env.Type == typeUserCreated, env.Type == typeUserUpdated:
		var cu clerk.User
		if err := json.Unmarshal(env.Data, &cu); err != nil {
			return event{}, fmt.Errorf("%w: %s data is not a user: %v", errBadPayload, env.Type, err)
		}
		u := cu.Domain()
		ev.User = &u
	case env.Type == typeUserDeleted, env.Type == typeOrgDeleted:
		var d deletedObject
		if err := json.Unmarshal(env.Data, &d); err != nil {
			return event{}, fmt.Errorf("%w: %s data is not a deleted object: %v", errBadPayload, env.Type, err)
		}
		if !d.Deleted {
			return event{}, fmt.Errorf("%w: %s with deleted=false", errBadPayload, env.Type)
		}
		ev.DeletedID = d.ID
	case env.Type == typeOrgCreated, env.Type == typeOrgUpdated:
		var co clerk.Organization
		if err := json.Unmarshal(env.Data, &co); err != nil {
			return event{}, fmt.Errorf("%w: %s data is not an organization: %v", errBadPayload, env.Type, err)
		}
		if co.Object != "organization" {
			return event{}, fmt.Errorf("%w: %s data is a %q, not an organization", errBadPayload, env.Type, co.Object)
		}
		o := co.Domain()
		ev.Org = &o
	case env.Type == typeMembershipCreated, env.Type == typeMembershipUpdated, env.Type == typeMembershipDeleted:
		var cm clerk.OrganizationMembership
		if err := json.Unmarshal(env.Data, &cm); err != nil {
			return event{}, fmt.Errorf("%w: %s data is not an organization membership: %v", errBadPayload, env.Type, err)
		}
		if cm.Object != "organization_membership" {
			return event{}, fmt.Errorf("%w: %s data is a %q, not an organization membership", errBadPayload, env.Type, cm.Object)
		}
		m := cm.Domain()
		ev.Membership = &m
	case strings.HasPrefix(env.Type, sessionTypePrefix):
		var so sessionObject
		if err := json.Unmarshal(env.Data, &so); err != nil {
			return event{}, fmt.Errorf("%w: %s data is not a session: %v", errBadPayload, env.Type, err)
		}
		if so.User == nil || so.User.ID == "" || so.User.UpdatedAt <= 0 {
			return ev, nil
		}
		if so.UserID != "" && so.UserID != so.User.ID {
			return event{}, fmt.Errorf("%w: %s of user %q embeds user %q", errBadPayload, env.Type, so.UserID, so.User.ID)
		}
		u := so.User.Domain()
		ev.User = &u
	}
	return ev, nil
}
