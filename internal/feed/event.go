// Package feed is userd's change feed: the events that other services (and
// end users, for their own record) watch to learn of every committed change
// of a user, its plan and its credits.
//
// The events themselves are written by the database, in the same statement
// as each change (row triggers; see db/migrations/00007_change_feed.sql), and
// read back in one order that is the same for every reader on every replica.
// This package hands them out: a Hub per replica polls the database once for
// every watcher and fans new events out to them; a watcher that starts from
// an older cursor, or falls behind, reads the database at its own pace until
// it has caught up. Nothing is buffered without bound.
package feed

import (
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/users"
)

// Kind is what an event reports. The values are what the database stores.
type Kind string

// Event kinds.
const (
	KindUserCreated    Kind = "user.created"
	KindUserUpdated    Kind = "user.updated"
	KindUserDeleted    Kind = "user.deleted"
	KindPlanChanged    Kind = "plan.changed"
	KindCreditsChanged Kind = "credits.changed"

	KindOrganizationCreated Kind = "organization.created"
	KindOrganizationUpdated Kind = "organization.updated"
	KindOrganizationDeleted Kind = "organization.deleted"
	KindMembershipCreated   Kind = "membership.created"
	KindMembershipUpdated   Kind = "membership.updated"
	KindMembershipDeleted   Kind = "membership.deleted"
	KindMemberCapChanged    Kind = "member_cap.changed"
)

// Kinds lists every kind.
var Kinds = []Kind{KindUserCreated, KindUserUpdated, KindUserDeleted, KindPlanChanged, KindCreditsChanged,
	KindOrganizationCreated, KindOrganizationUpdated, KindOrganizationDeleted,
	KindMembershipCreated, KindMembershipUpdated, KindMembershipDeleted, KindMemberCapChanged}

// membership reports whether k changes who is a member of an
// organization (or with which role and permissions).
func (k Kind) membership() bool {
	return k == KindMembershipCreated || k == KindMembershipUpdated || k == KindMembershipDeleted
}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool {
	for _, v := range Kinds {
		if k == v {
			return true
		}
	}
	return false
}

// Position is a place in the feed: the event (Xid, ID), or the place
// between events just before (Xid, 0). The feed is ordered by Xid, then ID.
type Position struct {
	// Xid is the transaction id the event is ordered by (the writer's,
	// or later; see the migration).
	Xid int64
	// ID is the event's id, unique in the feed.
	ID int64
}

// Less reports whether p comes before q.
func (p Position) Less(q Position) bool {
	return p.Xid < q.Xid || (p.Xid == q.Xid && p.ID < q.ID)
}

func maxPosition(p, q Position) Position {
	if p.Less(q) {
		return q
	}
	return p
}

// Event is one committed change.
type Event struct {
	// ID is unique in the feed: a consumer that sees an id twice (after
	// resuming from an older cursor) has seen that event before.
	ID       int64
	Position Position
	Kind     Kind
	// UserID and ClerkUserID name the user the event is about; empty for
	// an organization's events (ClerkOrgID).
	UserID      uuid.UUID
	ClerkUserID string
	// ClerkOrgID names the organization of an organization's event (of
	// its account, of itself, of a membership); empty for a user's.
	ClerkOrgID string
	// MemberClerkUserID is the member of a membership.* or
	// member_cap.changed event.
	MemberClerkUserID string
	// AccountID is the account of plan.changed and credits.changed (for a
	// personal account, UserID); uuid.Nil otherwise.
	AccountID uuid.UUID
	// ActorClerkUserID is the user who acted, when one did (the member who
	// spent from an organization's account).
	ActorClerkUserID string
	// Time is when the change's transaction started.
	Time time.Time
	// User is the user right after the change, for user.created,
	// user.updated and user.deleted (which carries no personal data: only
	// the ids, plan, credits and DeletedAt).
	User *users.User
	// PlanChange is the change of plan.changed.
	PlanChange *users.PlanChange
	// Transaction is the ledger entry of credits.changed.
	Transaction *users.Transaction
	// Organization is the organization of organization.*.
	Organization *Organization
	// Membership is the membership of membership.*.
	Membership *Membership
	// MemberCap is the cap of member_cap.changed.
	MemberCap *MemberCapChange
	// LSN, set by Watch, is a WAL position at or past the commit of the
	// event (that of the read that found it); 0 when unknown.
	LSN uint64
}

// Page is one read of the feed.
type Page struct {
	// Events are final events after the position read from, in feed order.
	Events []Event
	// Horizon is the xid below which every transaction has finished when
	// the page was read: every event before Position{Horizon, 0} that will
	// ever exist was already visible.
	Horizon int64
	// Xmax is the xmax of the same snapshot: every transaction that had
	// committed when the page was read is below it, and so is every event
	// it wrote (an event's order is its writer's xid or an earlier
	// event's).
	Xmax int64
	// Pruned is the last position deleted by retention: every event at or
	// before it is gone.
	Pruned Position
	// LSN is a WAL position of the primary at or past the commit of every
	// transaction the read could see (0: unknown).
	LSN uint64
	// Standby says a hot standby served the read: its Horizon may be
	// older than one the primary has already handed out.
	Standby bool
}
