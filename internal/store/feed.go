package store

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/consistency"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/users"
)

var _ feed.Store = (*Store)(nil)

// ReadUserEvents implements feed.Store. A context that allows it
// (consistency.AllowStandby) may have a hot standby serve the read
// (internal/standby); the page then says so.
func (s *Store) ReadUserEvents(ctx context.Context, after feed.Position, clerkUserID string, limit int32) (feed.Page, error) {
	ctx = consistency.Unfenced(ctx) // a read
	var (
		rows []sqlcdb.ReadUserEventsRow
		err  error
	)
	if clerkUserID == "" {
		rows, err = s.q.ReadUserEvents(ctx, s.read, sqlcdb.ReadUserEventsParams{
			AfterXid: after.Xid, AfterID: after.ID, RowLimit: limit,
		})
	} else {
		var ofUser []sqlcdb.ReadUserEventsOfUserRow
		ofUser, err = s.q.ReadUserEventsOfUser(ctx, s.read, sqlcdb.ReadUserEventsOfUserParams{
			ClerkUserID: clerkUserID, AfterXid: after.Xid, AfterID: after.ID, RowLimit: limit,
		})
		rows = make([]sqlcdb.ReadUserEventsRow, len(ofUser))
		for i, r := range ofUser {
			rows[i] = sqlcdb.ReadUserEventsRow(r)
		}
	}
	if err != nil {
		return feed.Page{}, translate(fmt.Errorf("read user events: %w", err))
	}
	if len(rows) == 0 {
		return feed.Page{}, fmt.Errorf("read user events: no horizon row")
	}
	// A page read on the primary waits for a synchronous standby when
	// the primary has one to wait for; a page read on a standby always
	// asks the primary, which alone knows (the standby may be an
	// asynchronous one, ahead of the synchronous standby a failover
	// would promote).
	if h := rows[0]; deref(h.SyncRequired) || h.InRecovery {
		if err := s.waitSyncStandby(ctx, h.PageLsn); err != nil {
			return feed.Page{}, err
		}
	}
	page := feed.Page{
		Horizon: rows[0].Horizon,
		Xmax:    rows[0].HorizonXmax,
		Pruned:  feed.Position{Xid: rows[0].PrunedXid, ID: rows[0].PrunedID},
		LSN:     uint64(max(rows[0].PageLsn, 0)),
		Standby: rows[0].InRecovery,
	}
	if rows[0].ID == nil {
		return page, nil
	}
	page.Events = make([]feed.Event, len(rows))
	for i, r := range rows {
		if page.Events[i], err = eventFrom(r); err != nil {
			return feed.Page{}, fmt.Errorf("read user events: event %d: %w", deref(r.ID), err)
		}
	}
	return page, nil
}

// Waiting for a synchronous standby: polled with a growing pause, for at
// most syncStandbyWait. A connected synchronous standby is there already
// (commits waited for it) or within the WAL writer's delay (200 ms by
// default, for the abort records that nothing waits for).
const (
	syncStandbyWait          = 5 * time.Second
	syncStandbyPollMin       = 2 * time.Millisecond
	syncStandbyPollMax       = 50 * time.Millisecond
	syncStandbyPrivilegeHint = "grant pg_monitor (or pg_read_all_stats) to userd's database role"
)

// waitSyncStandby returns once a synchronous standby has flushed the WAL up
// to lsn (at once when the primary has synchronous_standby_names empty; it
// always runs on the primary): what a page of the feed read at lsn shows is then on the standby,
// so a failover to it (pg_auto_failover and Patroni promote only a
// synchronous standby that is caught up) keeps every event handed out, and
// its xid sequence continues past every cursor handed out.
//
// Why it is needed although commits wait for the standby: a commit is
// invisible to other sessions while it waits, but it becomes visible
// without the standby when its wait is cancelled (pg_cancel_backend,
// pg_terminate_backend: "the transaction has already committed locally,
// but might not have been replicated"), and rollbacks never wait — yet the
// xmin horizon that cursors advance to moves past a rolled-back
// transaction at once. A new primary that never saw that transaction's
// WAL gives its xid to a new transaction, whose events a cursor already
// past it would skip.
func (s *Store) waitSyncStandby(ctx context.Context, lsn int64) error {
	deadline := time.Now().Add(syncStandbyWait)
	pause := syncStandbyPollMin
	for {
		st, err := s.q.SyncStandbyFlushed(ctx, s.db)
		if err != nil {
			return translate(fmt.Errorf("read user events: synchronous standby position: %w", err))
		}
		if !st.Required || st.Flushed >= lsn {
			return nil
		}
		if st.Flushed < 0 && st.Hidden > 0 {
			return fmt.Errorf("read user events: synchronous_standby_names is set but this role may not read "+
				"pg_stat_replication's positions (%s)", syncStandbyPrivilegeHint)
		}
		if time.Now().After(deadline) {
			return apperr.Unavailable(fmt.Errorf("read user events: no synchronous standby has confirmed "+
				"the WAL up to the feed's read position within %s", syncStandbyWait))
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return translate(ctx.Err())
		case <-t.C:
		}
		pause = min(2*pause, syncStandbyPollMax)
	}
}

// PruneUserEvents implements feed.Store.
func (s *Store) PruneUserEvents(ctx context.Context, before time.Time, limit int32) (int64, error) {
	n, err := s.q.PruneUserEvents(ctx, s.db, sqlcdb.PruneUserEventsParams{Before: before, RowLimit: limit})
	if err != nil {
		return 0, translate(fmt.Errorf("prune user events: %w", err))
	}
	return n, nil
}

// Event payloads as the triggers write them (db/migrations/00007_change_feed.sql).
type (
	userPayload struct {
		Email     *string    `json:"email"`
		FirstName *string    `json:"first_name"`
		LastName  *string    `json:"last_name"`
		ImageURL  *string    `json:"image_url"`
		Plan      string     `json:"plan"`
		Credits   int64      `json:"credits"`
		CreatedAt time.Time  `json:"created_at"`
		UpdatedAt time.Time  `json:"updated_at"`
		DeletedAt *time.Time `json:"deleted_at"`
	}
	planChangePayload struct {
		ID             int64      `json:"id"`
		PreviousPlan   string     `json:"previous_plan"`
		Plan           string     `json:"plan"`
		BonusCredits   int64      `json:"bonus_credits"`
		TransactionID  *int64     `json:"transaction_id"`
		Reason         string     `json:"reason"`
		IdempotencyKey string     `json:"idempotency_key"`
		ActorUserID    *uuid.UUID `json:"actor_user_id"`
		Service        *string    `json:"service"`
		CreatedAt      time.Time  `json:"created_at"`
	}
	transactionPayload struct {
		ID             int64      `json:"id"`
		Delta          int64      `json:"delta"`
		BalanceAfter   int64      `json:"balance_after"`
		Kind           string     `json:"kind"`
		Reason         string     `json:"reason"`
		IdempotencyKey *string    `json:"idempotency_key"`
		ActorUserID    *uuid.UUID `json:"actor_user_id"`
		Service        *string    `json:"service"`
		CreatedAt      time.Time  `json:"created_at"`
	}
)

func eventFrom(r sqlcdb.ReadUserEventsRow) (feed.Event, error) {
	ev := feed.Event{
		ID:               deref(r.ID),
		Position:         feed.Position{Xid: deref(r.OrderXid), ID: deref(r.ID)},
		Kind:             feed.Kind(deref(r.Kind)),
		UserID:           deref(r.UserID),
		ClerkUserID:      deref(r.ClerkUserID),
		ClerkOrgID:       deref(r.ClerkOrgID),
		AccountID:        deref(r.AccountID),
		ActorClerkUserID: deref(r.ActorClerkUserID),
		Time:             deref(r.CreatedAt),
	}
	if ev.AccountID == uuid.Nil && ev.ClerkOrgID == "" && (ev.Kind == feed.KindCreditsChanged || ev.Kind == feed.KindPlanChanged) {
		// Written before accounts (00010): the user's personal account,
		// whose id is the user's.
		ev.AccountID = ev.UserID
	}
	switch ev.Kind {
	case feed.KindUserCreated, feed.KindUserUpdated, feed.KindUserDeleted:
		var p userPayload
		if err := json.Unmarshal(r.Payload, &p); err != nil {
			return feed.Event{}, err
		}
		ev.User = &users.User{
			ID:          ev.UserID,
			ClerkUserID: ev.ClerkUserID,
			Email:       deref(p.Email),
			FirstName:   deref(p.FirstName),
			LastName:    deref(p.LastName),
			ImageURL:    deref(p.ImageURL),
			Plan:        users.Plan(p.Plan),
			Credits:     p.Credits,
			CreatedAt:   p.CreatedAt,
			UpdatedAt:   p.UpdatedAt,
			DeletedAt:   p.DeletedAt,
		}
	case feed.KindPlanChanged:
		var p planChangePayload
		if err := json.Unmarshal(r.Payload, &p); err != nil {
			return feed.Event{}, err
		}
		ev.PlanChange = &users.PlanChange{
			ID:             p.ID,
			UserID:         ev.AccountID,
			AccountID:      ev.AccountID,
			PreviousPlan:   users.Plan(p.PreviousPlan),
			Plan:           users.Plan(p.Plan),
			BonusCredits:   p.BonusCredits,
			TransactionID:  deref(p.TransactionID),
			Reason:         p.Reason,
			IdempotencyKey: p.IdempotencyKey,
			ActorUserID:    deref(p.ActorUserID),
			Service:        deref(p.Service),
			CreatedAt:      p.CreatedAt,
		}
	case feed.KindCreditsChanged:
		var p transactionPayload
		if err := json.Unmarshal(r.Payload, &p); err != nil {
			return feed.Event{}, err
		}
		ev.Transaction = &users.Transaction{
			ID:             p.ID,
			UserID:         ev.AccountID,
			AccountID:      ev.AccountID,
			Delta:          p.Delta,
			BalanceAfter:   p.BalanceAfter,
			Kind:           users.TxKind(p.Kind),
			Reason:         p.Reason,
			IdempotencyKey: deref(p.IdempotencyKey),
			ActorUserID:    deref(p.ActorUserID),
			Service:        deref(p.Service),
			CreatedAt:      p.CreatedAt,
		}
	default:
		if ok, err := orgEventFrom(&ev, r.Payload); ok || err != nil {
			return ev, err
		}
		return feed.Event{}, fmt.Errorf("unknown kind %q", ev.Kind)
	}
	return ev, nil
}

// FeedCursorKeys returns the deployment's feed cursor keys (a
// feed.CursorKeySource), creating the first — 32 random bytes — when there
// is none. Replicas racing to create it all read back the one that won.
func (s *Store) FeedCursorKeys(ctx context.Context) ([]feed.CursorKey, error) {
	rows, err := s.q.FeedCursorKeys(ctx, s.db)
	if err == nil && len(rows) == 0 {
		secret := make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
		if err := s.q.CreateFeedCursorKey(ctx, s.db, secret); err != nil {
			return nil, translate(fmt.Errorf("create feed cursor key: %w", err))
		}
		rows, err = s.q.FeedCursorKeys(ctx, s.db)
	}
	if err != nil {
		return nil, translate(fmt.Errorf("read feed cursor keys: %w", err))
	}
	keys := make([]feed.CursorKey, len(rows))
	for i, r := range rows {
		keys[i] = feed.CursorKey{ID: byte(r.ID), Secret: r.Secret}
	}
	return keys, nil
}
