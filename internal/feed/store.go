package feed

import (
	"context"
	"time"
)

// Store reads the feed from the database.
type Store interface {
	// ReadUserEvents returns up to limit final events after a position, in
	// feed order (only clerkUserID's when it is not ""), with the horizon
	// and the pruned position of the same snapshot.
	ReadUserEvents(ctx context.Context, after Position, clerkUserID string, limit int32) (Page, error)
	// PruneUserEvents deletes up to limit of the oldest events created
	// before a time, always a prefix of the feed, and says how many.
	PruneUserEvents(ctx context.Context, before time.Time, limit int32) (int64, error)
}
