package users

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Reconciling with Clerk's Backend API (internal/clerksync drives it): the
// states Clerk lists are applied through the same database function as
// webhook events, without a message id, so the same rules hold whichever
// arrives first — an older state never overwrites a newer one and a
// deletion is final.

// More outcomes of SyncClerkUsers and DeleteMissingClerkUsers.
const (
	// OutcomeUnchanged: the stored state is the listed one.
	OutcomeUnchanged EventOutcome = "unchanged"
	// OutcomeFailed: the state could not be applied (invalid, or it kept
	// failing); nothing changed for this user.
	OutcomeFailed EventOutcome = "failed"
)

// SourceSync is the UserCreated source of users created by a Clerk sync.
const SourceSync = "sync"

// syncEventType is the event type of states applied by a sync (recorded
// nowhere: they carry no message id).
const syncEventType = "clerk.sync"

// SyncResult is what syncing one user did (or, in a dry run, would do).
type SyncResult struct {
	// ClerkUserID is the Clerk id (of the organization or membership when
	// syncing those).
	ClerkUserID string
	Outcome     EventOutcome
	// Reason says why, for OutcomeFailed.
	Reason string
}

// ClerkVersion is what the store holds of a Clerk user (or organization,
// or membership): the Clerk updated_at of its stored state (0 when not
// from Clerk) and whether it is deleted.
type ClerkVersion struct {
	// ClerkUserID is the Clerk id (of the organization or membership for
	// those).
	ClerkUserID string
	UpdatedAt   int64
	Deleted     bool
}

// SyncClerkUsers applies users as Clerk's Backend API lists them. Only
// states newer than the stored ones are written, through the versioned
// path of webhook events (in batches of up to 32, each user in its own
// subtransaction); the others are reported unchanged (the stored state is
// this one), stale (a newer one is stored already, e.g. from a webhook that
// overtook the listing) or ignored_deleted. With dryRun nothing is written
// and the outcomes say what would happen. It returns one result per state,
// in order; an error means the database failed and the call may be
// repeated (it is idempotent).
func (s *Service) SyncClerkUsers(ctx context.Context, states []ClerkUser, dryRun bool) ([]SyncResult, error) {
	results := make([]SyncResult, len(states))
	ids := make([]string, 0, len(states))
	for i, cu := range states {
		results[i].ClerkUserID = cu.ID
		var v violations
		v.clerkUserID("id", cu.ID)
		if cu.UpdatedAt <= 0 {
			v.add("updated_at", "must be a positive timestamp in milliseconds")
		}
		// One user Clerk answered with unstorable text fails alone, not
		// the page it is written with.
		cu.checkText(&v, "")
		if err := v.err(); err != nil {
			results[i].Outcome, results[i].Reason = OutcomeFailed, err.Error()
			continue
		}
		ids = append(ids, cu.ID)
	}
	stored, err := s.store.GetClerkVersions(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("sync clerk users: %w", err)
	}
	byID := make(map[string]ClerkVersion, len(stored))
	for _, v := range stored {
		byID[v.ClerkUserID] = v
	}
	var pending []int // indexes of the states to write
	for i, cu := range states {
		if results[i].Outcome != "" {
			continue
		}
		v, ok := byID[cu.ID]
		switch {
		case !ok:
			results[i].Outcome = OutcomeCreated
		case v.Deleted:
			results[i].Outcome = OutcomeUserDeleted
			continue
		case v.UpdatedAt == cu.UpdatedAt:
			results[i].Outcome = OutcomeUnchanged
			continue
		case v.UpdatedAt > cu.UpdatedAt:
			results[i].Outcome = OutcomeStale
			continue
		default:
			results[i].Outcome = OutcomeUpdated
		}
		pending = append(pending, i)
	}
	if dryRun || len(pending) == 0 {
		return results, nil
	}
	events := make([]ClerkEventWrite, len(pending))
	for j, i := range pending {
		events[j] = ClerkEventWrite{Type: syncEventType, User: states[i].sanitized()}
	}
	outcomes, err := s.applyDirect(ctx, events)
	if err != nil {
		return nil, fmt.Errorf("sync clerk users: %w", err)
	}
	for j, i := range pending {
		results[i].Outcome, results[i].Reason = outcomes[j].Outcome, outcomes[j].ErrorCode
		if outcomes[j].Outcome == OutcomeCreated {
			s.userCreated(SourceSync)
		}
	}
	return results, nil
}

// LiveClerkUserIDs returns up to limit Clerk ids of live users, in id
// order, after the id after ("" for the first page).
func (s *Service) LiveClerkUserIDs(ctx context.Context, after string, limit int) ([]string, error) {
	ids, err := s.store.ListLiveClerkUserIDs(ctx, after, int32(min(max(limit, 1), 10_000)))
	if err != nil {
		return nil, fmt.Errorf("list live clerk user ids: %w", err)
	}
	return ids, nil
}

// DeleteMissingClerkUsers marks deleted users that Clerk no longer has,
// through the path of user.deleted (without a message id): the tombstone,
// ledger and plan history stay, and the personal data is erased unless
// KeepDeletedUserData. The caller is responsible for having made sure that
// Clerk does not have them: a deletion is final.
func (s *Service) DeleteMissingClerkUsers(ctx context.Context, clerkUserIDs []string) ([]SyncResult, error) {
	results := make([]SyncResult, len(clerkUserIDs))
	var events []ClerkEventWrite
	var pending []int
	for i, id := range clerkUserIDs {
		results[i].ClerkUserID = id
		var v violations
		if v.clerkUserID("id", id); v.err() != nil {
			results[i].Outcome, results[i].Reason = OutcomeFailed, v.err().Error()
			continue
		}
		events = append(events, ClerkEventWrite{Type: syncEventType, Deleted: true, User: ClerkUser{ID: id}})
		pending = append(pending, i)
	}
	outcomes, err := s.applyDirect(ctx, events)
	if err != nil {
		return nil, fmt.Errorf("delete missing clerk users: %w", err)
	}
	for j, i := range pending {
		results[i].Outcome, results[i].Reason = outcomes[j].Outcome, outcomes[j].ErrorCode
	}
	return results, nil
}

// EraseUser marks the user deleted, for good, and erases its personal data
// (email, names, image URL) whatever KeepDeletedUserData says: an erasure
// request. The tombstone, ledger and plan history stay. A user userd has
// no row for is NotFound (nothing is created).
func (s *Service) EraseUser(ctx context.Context, clerkUserID string) (User, error) {
	var v violations
	if v.clerkUserID("clerk_user_id", clerkUserID); v.err() != nil {
		return User{}, v.err()
	}
	if _, err := s.store.GetUserByClerkIDIncludingDeleted(ctx, clerkUserID); err != nil {
		return User{}, userErr(err, "erase user")
	}
	opts := s.clerk.opts
	opts.EraseDeleted = true
	res, err := s.applyWith(ctx, []ClerkEventWrite{{Type: "erase", Deleted: true, User: ClerkUser{ID: clerkUserID}}}, opts)
	if err != nil {
		return User{}, userErr(err, "erase user")
	}
	if res[0].Outcome != OutcomeDeleted {
		return User{}, fmt.Errorf("erase user: outcome %s %s", res[0].Outcome, res[0].ErrorCode)
	}
	u, err := s.store.GetUserByClerkIDIncludingDeleted(ctx, clerkUserID)
	if err != nil {
		return User{}, userErr(err, "erase user")
	}
	return u, nil
}

// UserIncludingDeleted returns the user with the Clerk id, deleted or not.
func (s *Service) UserIncludingDeleted(ctx context.Context, clerkUserID string) (User, error) {
	var v violations
	if v.clerkUserID("clerk_user_id", clerkUserID); v.err() != nil {
		return User{}, v.err()
	}
	u, err := s.store.GetUserByClerkIDIncludingDeleted(ctx, clerkUserID)
	if err != nil {
		return User{}, userErr(err, "get user")
	}
	return u, nil
}

// syncApplyConcurrency bounds the batch transactions one sync call runs at
// once (and so the connections it holds), as maxBatchesInFlight does for
// webhooks.
const syncApplyConcurrency = 4

// applyDirect applies events with the service's options, outside the
// webhook batcher: a sync brings its own batches.
func (s *Service) applyDirect(ctx context.Context, events []ClerkEventWrite) ([]ClerkEventResult, error) {
	return s.applyWith(ctx, events, s.clerk.opts)
}

// applyWith applies events in batches of up to maxBatch, up to
// syncApplyConcurrency at once, each sorted by Clerk id as the batcher
// does (they are not group commits of deliveries, so ClerkBatchApplied
// does not count them), and applies again (up to maxEventAttempts times) the events that
// failed inside their batch (say, in a deadlock with a webhook batch). An
// event that keeps failing is OutcomeFailed with its last SQLSTATE. It
// returns one result per event, in order, or the first error of a whole
// batch (the database failed).
func (s *Service) applyWith(ctx context.Context, events []ClerkEventWrite, opts ClerkApplyOptions) ([]ClerkEventResult, error) {
	out := make([]ClerkEventResult, len(events))
	todo := make([]int, len(events))
	for i := range todo {
		todo[i] = i
	}
	for attempt := 1; len(todo) > 0; attempt++ {
		slices.SortStableFunc(todo, func(a, b int) int { return strings.Compare(events[a].lockKey(), events[b].lockKey()) })
		var (
			mu    sync.Mutex
			again []int
			first error
			wg    sync.WaitGroup
			slots = make(chan struct{}, syncApplyConcurrency)
		)
		for chunk := range slices.Chunk(todo, maxBatch) {
			slots <- struct{}{}
			wg.Go(func() {
				defer func() { <-slots }()
				batch := make([]ClerkEventWrite, len(chunk))
				for j, i := range chunk {
					batch[j] = events[i]
				}
				bctx, cancel := context.WithTimeout(ctx, batchTimeout)
				res, err := s.store.ApplyClerkEvents(bctx, batch, opts)
				cancel()
				if err == nil && len(res) != len(batch) {
					err = fmt.Errorf("apply clerk events: %d results for %d events", len(res), len(batch))
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if first == nil {
						first = err
					}
					return
				}
				for j, i := range chunk {
					out[i] = res[j]
					if res[j].Outcome != OutcomeRetry {
						continue
					}
					if attempt < maxEventAttempts {
						again = append(again, i)
					} else {
						out[i].Outcome = OutcomeFailed
					}
				}
			})
		}
		wg.Wait()
		if first != nil {
			return nil, first
		}
		todo = again
	}
	return out, nil
}
