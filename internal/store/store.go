// Package store implements users.Store over PostgreSQL with pgx/v5 and the
// sqlc-generated queries in gen/sqlcdb. It is the only package that touches
// the database: it calls the queries and server-side functions, converts sqlc rows into domain types
// and translates PostgreSQL errors (missing rows, unique violations matched
// by constraint name, connection failures) into the domain's errors.
//
// To add a query: write it in db/queries/<table>.sql, run `make generate`,
// add a method here and to users.Store.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/standby"
	"github.com/userd/userd/internal/users"
)

// Store is users.Store over a pgx pool. Every method is one round trip:
// writes are single statements or calls of the server-side functions the
// migrations install, so no transaction spans two round trips.
type Store struct {
	db sqlcdb.DBTX
	// read runs the reads a call may take from a standby
	// (internal/standby); without standbys, it is db.
	read sqlcdb.DBTX
	// pool and acquireTimeout serve RunClerkSync, which holds a
	// connection of its own for a whole run.
	pool           *pgxpool.Pool
	acquireTimeout time.Duration
	q              *sqlcdb.Queries
	// userReads batches the reads of a user by Clerk id (readbatch.go);
	// nil with standbys, whose reads each go where their call's
	// consistency allows.
	userReads *userReads
	// writes group-commits the credit and plan writes (writebatch.go);
	// nil when Options.DisableWriteBatching.
	writes *writeBatcher
	// cache keeps users read by Clerk id (readcache.go); nil when off,
	// and always with standbys.
	cache *ReadCache
}

var _ users.Store = (*Store)(nil)

// Options configures a Store.
type Options struct {
	// AcquireTimeout, if positive, bounds how long a call waits for a free
	// pool connection (pgxpool has no bound of its own: it waits as long
	// as the caller's context allows). Past it, the call fails Unavailable
	// at once rather than queueing for the rest of its deadline: a
	// saturated pool sheds load.
	AcquireTimeout time.Duration
	// Standbys, if set, serves the reads a call's context allows on a
	// standby (GetLiveUserBy*, ListCreditTransactions, SummarizeUsage,
	// CheckAffordability, ListPrices, ListPriceChanges), and every write
	// records its WAL position in the call's standby.Recorder, if any.
	Standbys *standby.Router
	// DisableWriteBatching runs every credit and plan write in its own
	// transaction rather than group-committing concurrent ones
	// (writebatch.go).
	DisableWriteBatching bool
	// WriteLanes is how many write batches may run at once (0: 4).
	WriteLanes int
	// ReadCache, if set and without Standbys, keeps the users read by
	// Clerk id (readcache.go). Its feed hub must run, and the pool's
	// tracer must include its FenceTracer.
	ReadCache *ReadCache
}

// New returns a Store over pool.
func New(pool *pgxpool.Pool, opts Options) *Store {
	var db sqlcdb.DBTX = pool
	if opts.AcquireTimeout > 0 {
		db = boundedPool{pool: pool, timeout: opts.AcquireTimeout}
	}
	s := &Store{db: db, read: db, pool: pool, acquireTimeout: opts.AcquireTimeout, q: sqlcdb.New()}
	if opts.Standbys != nil {
		s.db = standby.Recording(db, s.acquire)
		s.read = opts.Standbys.Reads(s.db)
	} else {
		s.userReads = newUserReads(db, s.q)
		s.cache = opts.ReadCache
	}
	if !opts.DisableWriteBatching {
		lanes := opts.WriteLanes
		if lanes <= 0 {
			lanes = writeLanes
		}
		s.writes = newWriteBatcher(s.db, s.acquire, lanes)
		s.writes.recording = opts.Standbys != nil
		s.writes.cache = s.cache
	}
	return s
}

// Stop ends group commit at shutdown (writebatch.go): credit and plan
// writes that come after it are refused Unavailable, and it waits until
// those already queued are answered, each after its commit (or with an
// error). If ctx ends first, the calls still queued are answered
// Unavailable and the error says batches may still run. Call it after
// everything that writes has stopped and before the pool closes.
func (s *Store) Stop(ctx context.Context) error {
	if s.writes == nil {
		return nil
	}
	return s.writes.stop(ctx)
}

// batched is where a credit or plan write keyed by lockKey (userBatchKey,
// orgBatchKey) runs: group-committed with the concurrent ones, or, for an
// empty key or without batching, on its own.
func (s *Store) batched(lockKey string) sqlcdb.DBTX {
	if s.writes == nil || lockKey == "" {
		return s.db
	}
	return s.writes.on(lockKey)
}

// userBatchKey and orgBatchKey key the writes of a personal account and
// of an organization's account: a batch runs its calls in key order.
func userBatchKey(clerkUserID string) string { return "u:" + clerkUserID }

func orgBatchKey(clerkOrgID string) string { return "o:" + clerkOrgID }

// accountBatchKey keys a write naming the organization clerkOrgID's
// account, or when it is empty, clerkUserID's personal account.
func accountBatchKey(clerkUserID, clerkOrgID string) string {
	if clerkOrgID != "" {
		return orgBatchKey(clerkOrgID)
	}
	return userBatchKey(clerkUserID)
}

// acquire takes a connection of the pool, within AcquireTimeout.
func (s *Store) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	if s.acquireTimeout > 0 {
		return boundedPool{pool: s.pool, timeout: s.acquireTimeout}.acquire(ctx)
	}
	return s.pool.Acquire(ctx)
}

func (s *Store) GetLiveUserByClerkID(ctx context.Context, clerkUserID string) (users.User, error) {
	if s.userReads != nil {
		return s.getUserByClerkID(ctx, clerkUserID, true)
	}
	row, err := s.q.GetLiveUserByClerkID(ctx, s.read, clerkUserID)
	return userOut(row, err)
}

func (s *Store) GetLiveUserByID(ctx context.Context, id uuid.UUID) (users.User, error) {
	row, err := s.q.GetLiveUserByID(ctx, s.read, id)
	return userOut(sqlcdb.GetLiveUserByClerkIDRow(row), err)
}

func (s *Store) GetLiveUserByEmail(ctx context.Context, email string) (users.User, error) {
	row, err := s.q.GetLiveUserByEmail(ctx, s.read, email)
	return userOut(sqlcdb.GetLiveUserByClerkIDRow(row), err)
}

func (s *Store) GetUserByClerkIDIncludingDeleted(ctx context.Context, clerkUserID string) (users.User, error) {
	if s.userReads != nil {
		return s.getUserByClerkID(ctx, clerkUserID, false)
	}
	row, err := s.q.GetUserByClerkIDIncludingDeleted(ctx, s.db, clerkUserID)
	return userOut(userRow(row), err)
}

func (s *Store) GetPersonalAccount(ctx context.Context, clerkUserID string) (users.Account, error) {
	r, err := s.q.GetPersonalAccount(ctx, s.read, clerkUserID)
	if err != nil {
		return users.Account{}, translate(fmt.Errorf("get personal account: %w", err))
	}
	return accountOut(r.ID, r.Plan, r.Credits, r.CreatedAt, r.UpdatedAt, r.ClosedAt, r.ClerkUserID, ""), nil
}

func (s *Store) GetOrganizationAccount(ctx context.Context, clerkOrgID string) (users.Account, error) {
	r, err := s.q.GetOrganizationAccount(ctx, s.read, clerkOrgID)
	if err != nil {
		return users.Account{}, translate(fmt.Errorf("get organization account: %w", err))
	}
	return accountOut(r.ID, r.Plan, r.Credits, r.CreatedAt, r.UpdatedAt, r.ClosedAt, "", r.ClerkOrgID), nil
}

func (s *Store) InsertUserWithInitialCredits(ctx context.Context, u users.NewUser) (users.User, bool, error) {
	row, err := s.q.InsertUserWithInitialCredits(ctx, s.db, sqlcdb.InsertUserWithInitialCreditsParams{
		ClerkUserID:    u.ClerkUserID,
		Email:          nullable(u.Email),
		FirstName:      nullable(u.FirstName),
		LastName:       nullable(u.LastName),
		ImageURL:       nullable(u.ImageURL),
		ClerkUpdatedAt: nullable(u.ClerkUpdatedAt),
		Credits:        u.Credits,
	})
	if err != nil {
		return users.User{}, false, translate(err)
	}
	if row.UID == nil {
		return users.User{}, false, nil
	}
	return users.User{
		ID:             deref(row.UID),
		ClerkUserID:    deref(row.UClerkUserID),
		Email:          deref(row.UEmail),
		FirstName:      deref(row.UFirstName),
		LastName:       deref(row.ULastName),
		ImageURL:       deref(row.UImageUrl),
		Plan:           users.Plan(deref(row.UPlan)),
		Credits:        deref(row.UCredits),
		ClerkUpdatedAt: deref(row.UClerkUpdatedAt),
		CreatedAt:      deref(row.UCreatedAt),
		UpdatedAt:      deref(row.UUpdatedAt),
		DeletedAt:      row.UDeletedAt,
	}, true, nil
}

func (s *Store) ChangeCredits(ctx context.Context, w users.CreditWrite) (res users.CreditWriteResult, err error) {
	err = s.audited(ctx, personalAccount(w.ClerkUserID), userBatchKey(w.ClerkUserID), func(db sqlcdb.DBTX) (bool, error) {
		res, err = s.changeCredits(ctx, db, w)
		return res.Status == users.WriteApplied, err
	})
	return res, err
}

func (s *Store) changeCredits(ctx context.Context, db sqlcdb.DBTX, w users.CreditWrite) (users.CreditWriteResult, error) {
	row, err := s.q.ChangeCredits(ctx, db, sqlcdb.ChangeCreditsParams{
		ClerkUserID:    w.ClerkUserID,
		Kind:           string(w.Kind),
		Delta:          w.Delta,
		Reason:         w.Reason,
		IdempotencyKey: w.IdempotencyKey,
		Service:        nullable(w.Service),
	})
	if err != nil {
		return users.CreditWriteResult{}, translate(fmt.Errorf("change credits: %w", err))
	}
	res := users.CreditWriteResult{Status: users.WriteStatus(deref(row.Status)), Available: deref(row.Available)}
	if t := writtenTransaction(row.TID, deref(row.TUserID), row.TDelta, row.TBalanceAfter, row.TKind, row.TReason,
		row.TCreatedAt, w.IdempotencyKey, row.TActorUserID, row.TService); t != nil {
		ownActor(t, w.ClerkUserID)
		res.Transaction = *t
	}
	return res, nil
}

func (s *Store) SetPlan(ctx context.Context, w users.PlanWrite) (res users.PlanWriteResult, err error) {
	err = s.audited(ctx, personalAccount(w.ClerkUserID), userBatchKey(w.ClerkUserID), func(db sqlcdb.DBTX) (bool, error) {
		res, err = s.setPlan(ctx, db, w)
		return res.Status == users.WriteApplied, err
	})
	return res, err
}

func (s *Store) setPlan(ctx context.Context, db sqlcdb.DBTX, w users.PlanWrite) (users.PlanWriteResult, error) {
	row, err := s.q.SetPlan(ctx, db, sqlcdb.SetPlanParams{
		ClerkUserID:    w.ClerkUserID,
		Plan:           string(w.Plan),
		Bonus:          w.BonusCredits,
		Reason:         w.Reason,
		IdempotencyKey: w.IdempotencyKey,
		Service:        nullable(w.Service),
	})
	if err != nil {
		return users.PlanWriteResult{}, translate(fmt.Errorf("set plan: %w", err))
	}
	res := users.PlanWriteResult{Status: users.WriteStatus(deref(row.Status))}
	if row.UID == nil || row.PcID == nil {
		return res, nil
	}
	res.User = users.User{
		ID:             *row.UID,
		ClerkUserID:    deref(row.UClerkUserID),
		Email:          deref(row.UEmail),
		FirstName:      deref(row.UFirstName),
		LastName:       deref(row.ULastName),
		ImageURL:       deref(row.UImageUrl),
		Plan:           users.Plan(deref(row.UPlan)),
		Credits:        deref(row.UCredits),
		ClerkUpdatedAt: deref(row.UClerkUpdatedAt),
		CreatedAt:      deref(row.UCreatedAt),
		UpdatedAt:      deref(row.UUpdatedAt),
	}
	res.Change = users.PlanChange{
		ID:             *row.PcID,
		UserID:         *row.UID,
		PreviousPlan:   users.Plan(deref(row.PcPreviousPlan)),
		Plan:           users.Plan(deref(row.PcPlan)),
		BonusCredits:   deref(row.PcBonusCredits),
		TransactionID:  deref(row.TID),
		Reason:         deref(row.PcReason),
		IdempotencyKey: w.IdempotencyKey,
		CreatedAt:      deref(row.PcCreatedAt),
	}
	res.Change.AccountID = res.Change.UserID
	res.Change.ActorUserID, res.Change.Service = deref(row.PcActorUserID), deref(row.PcService)
	res.Bonus = writtenTransaction(row.TID, *row.UID, row.TDelta, row.TBalanceAfter, row.TKind, row.TReason,
		row.TCreatedAt, w.IdempotencyKey, row.PcActorUserID, row.PcService)
	ownActor(res.Bonus, w.ClerkUserID)
	return res, nil
}

// ListCreditTransactions pages a personal account's ledger: the same read
// as an organization's, each entry with its actor's Clerk user id (a
// service acting for the user records the user as actor).
func (s *Store) ListCreditTransactions(ctx context.Context, userID uuid.UUID, beforeID int64, limit int32) ([]users.Transaction, error) {
	return s.ListAccountCreditTransactions(ctx, userID, "", beforeID, limit)
}

func (s *Store) DeleteWebhookEventsBefore(ctx context.Context, before time.Time, limit int32) (int64, error) {
	n, err := s.q.DeleteWebhookEventsBefore(ctx, s.db, sqlcdb.DeleteWebhookEventsBeforeParams{Before: before, RowLimit: limit})
	return n, translate(err)
}

func (s *Store) GetClerkVersions(ctx context.Context, clerkUserIDs []string) ([]users.ClerkVersion, error) {
	rows, err := s.q.GetClerkVersions(ctx, s.db, clerkUserIDs)
	if err != nil {
		return nil, translate(fmt.Errorf("get clerk versions: %w", err))
	}
	out := make([]users.ClerkVersion, len(rows))
	for i, r := range rows {
		out[i] = users.ClerkVersion{ClerkUserID: r.ClerkUserID, UpdatedAt: r.ClerkUpdatedAt, Deleted: r.Deleted}
	}
	return out, nil
}

func (s *Store) ListLiveClerkUserIDs(ctx context.Context, after string, limit int32) ([]string, error) {
	ids, err := s.q.ListLiveClerkUserIDs(ctx, s.db, sqlcdb.ListLiveClerkUserIDsParams{After: after, RowLimit: limit})
	if err != nil {
		return nil, translate(fmt.Errorf("list live clerk user ids: %w", err))
	}
	return ids, nil
}

// clerkSyncLockKey is the advisory lock of Clerk sync runs: the first
// eight bytes of sha256("userd clerk sync") as a big-endian int64, made as
// migrate.LockID is, so that nothing else on the server takes it.
const clerkSyncLockKey int64 = -4730454424446879977

// RunClerkSync runs run while holding the Clerk sync lock
// (withSessionLock), so that one run at a time goes on across every
// replica and `userd sync-clerk`, and records the run in clerk_sync_state
// (its result is what run returns). It returns started == false, without
// running, when another session holds the lock (busy) or when a run
// started less than minInterval ago.
func (s *Store) RunClerkSync(ctx context.Context, minInterval time.Duration, run func(context.Context) string) (started, busy bool, err error) {
	acquired, err := s.withSessionLock(ctx, clerkSyncLockKey, func(ctx context.Context) error {
		conn := sessionConn(ctx)
		if _, err := s.q.StartClerkSync(ctx, conn, minInterval.Seconds()); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			return translate(fmt.Errorf("start clerk sync: %w", err))
		}
		started = true
		result := run(ctx)
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := s.q.FinishClerkSync(fctx, conn, result); err != nil {
			return translate(fmt.Errorf("finish clerk sync: %w", err))
		}
		return nil
	})
	return started, err == nil && !acquired, err
}

// sessionConnKey carries the connection withSessionLock holds its lock on.
type sessionConnKey struct{}

// sessionConn is the connection withSessionLock runs fn on.
func sessionConn(ctx context.Context) *pgxpool.Conn {
	c, _ := ctx.Value(sessionConnKey{}).(*pgxpool.Conn)
	return c
}

// withSessionLock runs fn while holding the session advisory lock key on
// a connection set aside for the whole run (sessionConn(ctx) inside fn):
// PostgreSQL releases it by itself when that connection ends, however the
// process holding it died, so no lock ever outlives its holder and none
// needs an expiry. acquired is false, without running fn, when another
// session holds the lock.
func (s *Store) withSessionLock(ctx context.Context, key int64, fn func(context.Context) error) (acquired bool, err error) {
	conn, err := s.acquire(ctx)
	if err != nil {
		return false, translate(fmt.Errorf("advisory lock: %w", err))
	}
	acquired, err = s.q.TryClerkSyncLock(ctx, conn, key)
	if err != nil || !acquired {
		conn.Release()
		return false, translate(err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if released, uerr := s.q.ClerkSyncUnlock(uctx, conn, key); uerr != nil || !released {
			// Never hand a connection that may still hold the lock back
			// to the pool: closing it releases the lock.
			_ = conn.Conn().Close(uctx)
		}
		conn.Release()
	}()
	return true, fn(context.WithValue(ctx, sessionConnKey{}, conn))
}
