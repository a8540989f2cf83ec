package store

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/consistency"
	"github.com/userd/userd/internal/users"
)

// userReads batches the reads of a user by Clerk id (GetUser, EnsureUser
// of an existing user): the reads that arrive while userReadsInFlight
// statements are running wait for one of them to end and then go
// together, as one statement (GetUsersByClerkIDsIncludingDeleted), instead
// of one round trip and one statement each. Under load most of a read's
// cost is the statement's fixed cost on both sides (pgx's write and read
// system calls, PostgreSQL's per-statement work), not its row (issue 24);
// a read that finds none running goes at once, alone, so that an idle
// server answers as before.
//
// The batcher caches nothing: every read runs a statement that starts
// after the read arrived (a read joins only a batch that has not been
// sent), so it sees every write committed before it was asked for, as its
// own statement would. The read cache (readcache.go), when on, answers
// some reads before they reach it, under its own rules.
type userReads struct {
	db sqlcdb.DBTX
	q  *sqlcdb.Queries

	mu       sync.Mutex
	pending  []*userRead
	inFlight int
	// batched counts the reads answered by a statement of several ids
	// (the tests check that batching happens).
	batched atomic.Int64
}

const (
	// userReadsInFlight is how many batches run at once: two keep the
	// database busy while a batch's answer travels back, and let reads
	// queue, and so batch, under load. Measured in one make bench run
	// (2 cores, c=32): 2 in flight served about twice the GetUser rate
	// of 4 (whose batches were mostly of one read), and the same as 1.
	userReadsInFlight = 2
	// userReadsSecondAt is how many reads must be waiting before a second
	// statement starts beside a running one: fewer wait for the running
	// one to end and go together. Starting the second for any one read
	// made two statements in three a single read under make bench's
	// GetUser load, each with a statement's whole fixed cost in userd and
	// PostgreSQL; waiting for 8 made batches larger (GetUser about 1.1x
	// the rate, twice the reads per statement at half the peak rate).
	userReadsSecondAt = 8
	// userReadsMaxBatch bounds one statement's ids.
	userReadsMaxBatch = 128
)

// userRead is one caller's read, answered when done is closed.
type userRead struct {
	ctx         context.Context
	clerkUserID string
	done        chan struct{}
	row         sqlcdb.GetUserByClerkIDIncludingDeletedRow
	err         error
}

func newUserReads(db sqlcdb.DBTX, q *sqlcdb.Queries) *userReads {
	return &userReads{db: db, q: q}
}

// get reads the user with the Clerk id, deleted or not (pgx.ErrNoRows if
// none).
func (b *userReads) get(ctx context.Context, clerkUserID string) (sqlcdb.GetUserByClerkIDIncludingDeletedRow, error) {
	if err := ctx.Err(); err != nil {
		return sqlcdb.GetUserByClerkIDIncludingDeletedRow{}, err
	}
	if !utf8.ValidString(clerkUserID) || strings.IndexByte(clerkUserID, 0) >= 0 {
		// PostgreSQL refuses such a text parameter, and would fail the
		// whole batch: it goes alone, to its own error (the service
		// validates Clerk ids before reading, so none should come).
		return b.q.GetUserByClerkIDIncludingDeleted(consistency.Unfenced(ctx), b.db, clerkUserID)
	}
	r := &userRead{ctx: ctx, clerkUserID: clerkUserID, done: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, r)
	var batch []*userRead
	if b.inFlight == 0 || (b.inFlight < userReadsInFlight && len(b.pending) >= userReadsSecondAt) {
		b.inFlight++
		batch = b.take()
	}
	b.mu.Unlock()
	if batch != nil {
		// On a goroutine of its own, not the caller's: the batch's
		// statement ignores each caller's cancellation (batchContext), and
		// this caller, like every other, must stop waiting when its
		// context ends.
		go b.runFrom(batch)
	}
	select {
	case <-r.done:
		return r.row, r.err
	case <-ctx.Done():
		// Its batch still runs for the others; this caller is answered
		// as its own statement would be, with the context's error.
		return sqlcdb.GetUserByClerkIDIncludingDeletedRow{}, ctx.Err()
	}
}

// take removes the oldest pending reads, at most userReadsMaxBatch, and
// returns them; b.mu is held.
func (b *userReads) take() []*userRead {
	n := min(len(b.pending), userReadsMaxBatch)
	batch := b.pending[:n:n]
	b.pending = append([]*userRead(nil), b.pending[n:]...)
	return batch
}

// runFrom runs batch, then batches of the reads that arrived meanwhile
// until none is pending, then frees its place in flight.
func (b *userReads) runFrom(batch []*userRead) {
	for {
		b.run(batch)
		b.mu.Lock()
		batch = b.take()
		if len(batch) == 0 {
			b.inFlight--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
	}
}

// run answers the reads of batch with one statement; those whose caller
// gave up meanwhile get their context's error and are not asked for.
func (b *userReads) run(batch []*userRead) {
	live := batch[:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.err = err
			close(r.done)
			continue
		}
		live = append(live, r)
	}
	batch = live
	if len(batch) == 0 {
		return
	}
	ctx, cancel := batchContext(batch)
	defer cancel()
	if len(batch) == 1 {
		r := batch[0]
		r.row, r.err = b.q.GetUserByClerkIDIncludingDeleted(ctx, b.db, r.clerkUserID)
		close(r.done)
		return
	}
	ids := make([]string, len(batch))
	for i, r := range batch {
		ids[i] = r.clerkUserID
	}
	rows, err := b.q.GetUsersByClerkIDsIncludingDeleted(ctx, b.db, ids)
	b.batched.Add(int64(len(batch)))
	byID := make(map[string]int, len(rows))
	for i := range rows {
		byID[rows[i].ClerkUserID] = i
	}
	for _, r := range batch {
		switch i, ok := byID[r.clerkUserID]; {
		case err != nil:
			r.err = err
		case !ok:
			r.err = pgx.ErrNoRows
		default:
			r.row = sqlcdb.GetUserByClerkIDIncludingDeletedRow(rows[i])
		}
		close(r.done)
	}
}

// batchContext is the context a batch's statement runs in: the values of
// the first read's context (its trace, if any), no cancellation of any
// one caller (the others still wait for the answer), and the latest of the
// callers' deadlines (none if one has none), so that the statement is
// bounded as each caller's own would be.
func batchContext(batch []*userRead) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, r := range batch {
		d, ok := r.ctx.Deadline()
		if !ok {
			return context.WithCancel(consistency.Unfenced(context.WithoutCancel(batch[0].ctx)))
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(consistency.Unfenced(context.WithoutCancel(batch[0].ctx)), latest)
}

// getUserByClerkID reads the user with the Clerk id from the read cache
// (readcache.go), if on and allowed, else through the batcher, keeping
// the row in the cache when the rules allow; live reports only users not
// deleted.
func (s *Store) getUserByClerkID(ctx context.Context, clerkUserID string, live bool) (users.User, error) {
	var (
		row sqlcdb.GetUserByClerkIDIncludingDeletedRow
		err error
	)
	if c := s.cache; c != nil {
		var ok bool
		if row, ok = c.get(ctx, clerkUserID); !ok {
			c.misses.Add(1)
			gen, fill := c.note(clerkUserID)
			row, err = s.userReads.get(ctx, clerkUserID)
			if err == nil && fill {
				c.fill(clerkUserID, gen, row)
			}
		}
	} else {
		row, err = s.userReads.get(ctx, clerkUserID)
	}
	if err == nil && live && row.DeletedAt != nil {
		err = pgx.ErrNoRows
	}
	return userOut(userRow(row), err)
}

// userRow is the row of a user read by Clerk id, as the other reads of a
// user return it.
func userRow(r sqlcdb.GetUserByClerkIDIncludingDeletedRow) sqlcdb.GetLiveUserByClerkIDRow {
	return sqlcdb.GetLiveUserByClerkIDRow{
		ID: r.ID, ClerkUserID: r.ClerkUserID, Email: r.Email, FirstName: r.FirstName, LastName: r.LastName,
		ImageURL: r.ImageURL, Plan: r.Plan, Credits: r.Credits, ClerkUpdatedAt: r.ClerkUpdatedAt,
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, DeletedAt: r.DeletedAt,
	}
}
