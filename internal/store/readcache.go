package store

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/consistency"
)

// ReadCache keeps the rows of users read by Clerk id (GetUser, EnsureUser
// of an existing user: the reads of readbatch.go) on one replica, for
// --read-cache (issue 24). It is correct across replicas because every
// write that changes such a row writes a change-feed event naming the user
// (db/migrations: the users, credit_transactions and plan_changes
// triggers), and this replica's feed hub (internal/feed) evicts the users
// of the events it hands out before it moves its head. The guarantees:
//
//   - A read never sees a row older than a write this replica answered
//     before the read began: a credit or plan write of a personal account
//     (the write batcher's "u:" calls) evicts its user once it has
//     committed and before it answers; every other statement run on the
//     pool (webhooks, the console, jobs, organizations' writes) raises
//     the write fence (FenceTracer) when it ends, and no read is served
//     from the cache until the hub has handed out every event committed
//     before the fence.
//   - A read that sends the version-2 consistency token of a write
//     (answered by any replica) never sees a row older than that write:
//     the token is above the feed order of every event the write wrote,
//     and the cache serves only while the hub's head is at or past it.
//   - Any other read sees every write committed more than FreshFor (1s)
//     before it began, on any replica: the cache serves only while the
//     hub has handed out every event committed before a time within
//     FreshFor of now. When the hub cannot poll (the database is down or
//     slow) or the head stands still (a long transaction keeps the feed's
//     horizon back), every read goes to the database.
//
// Two changes of a row write no event: a Clerk update that changes no
// profile field (a sign-in) still moves update_time, and so does an
// operator closing a personal account. A row is therefore kept at most
// MaxAge (10s): such a change shows within it on every replica (on the
// replica that made it, the write fence hides the row only until its hub
// catches up). Balances, plans, profiles and deletions always come with
// an event.
//
// A row is filled only from a read that started after the hub did, and
// only if no eviction hit its shard between the read's start and its
// answer (the shard's generation): a row read before a write committed
// can never outlive that write's eviction. A row whose balance depends on
// the time (expiring credits: grants fall due without a write) is never
// kept. The cache is off with standbys (those reads are not the
// primary's).
type ReadCache struct {
	shards   [readCacheShards]readCacheShard
	perShard int
	freshFor time.Duration
	maxAge   time.Duration
	seed     maphash.Seed
	base     time.Time // monotonic clock origin of the nanosecond times

	// started: the hub has read its starting head; before, nothing is
	// filled (an event below that head would never evict it).
	started atomic.Bool
	// head is the hub's head: every event whose order is below it has
	// been handed out, and its user evicted.
	head atomic.Int64
	// coveredAt (ns since base): every event committed before it has
	// been handed out. fence (ns since base): when the last statement the
	// fence watches ended.
	coveredAt, fence atomic.Int64

	hits, misses, refused, evictions, notCached atomic.Int64

	// broken breaks rules on purpose, and fillDelay (ns) widens the race
	// of a fill with an eviction: for the tests that show the
	// multi-replica tests can fail (BreakForTest).
	broken    atomic.Uint32
	fillDelay atomic.Int64
}

// Rules BreakForTest can break.
const (
	// BreakTokens serves reads whatever token they send.
	BreakTokens = 1 << iota
	// BreakGenerations fills rows whatever evictions hit their shard.
	BreakGenerations
	// BreakLocalWrites neither evicts a personal write's user nor heeds
	// the write fence.
	BreakLocalWrites
)

// BreakForTest breaks the rules of rules (Break*), and makes every fill
// wait fillDelay between its read and its insertion. Tests only: it
// shows that the tests of the rules can fail.
func (c *ReadCache) BreakForTest(rules uint32, fillDelay time.Duration) {
	c.broken.Store(rules)
	c.fillDelay.Store(int64(fillDelay))
}

func (c *ReadCache) breaks(rule uint32) bool { return c.broken.Load()&rule != 0 }

type readCacheShard struct {
	mu  sync.Mutex
	gen int64
	m   map[string]readCacheEntry
}

type readCacheEntry struct {
	row sqlcdb.GetUserByClerkIDIncludingDeletedRow
	// readAt (ns since base) is when the read that found it began.
	readAt int64
}

const (
	readCacheShards = 128
	// DefaultReadCacheEntries bounds the rows kept by default.
	DefaultReadCacheEntries = 100_000
	// DefaultReadCacheFreshFor is how far behind the hub may be for a
	// read without a token to be served from the cache.
	DefaultReadCacheFreshFor = time.Second
	// DefaultReadCacheMaxAge bounds how long a row is kept.
	DefaultReadCacheMaxAge = 10 * time.Second
)

// ReadCacheOptions configures a ReadCache; zero values take the defaults.
type ReadCacheOptions struct {
	// Entries bounds the rows kept (DefaultReadCacheEntries).
	Entries int
	// FreshFor bounds how old a row a read without a token may see
	// (DefaultReadCacheFreshFor).
	FreshFor time.Duration
	// MaxAge bounds how long a row is kept (DefaultReadCacheMaxAge).
	MaxAge time.Duration
}

// NewReadCache returns an empty cache; it serves nothing until its feed
// hub runs (feed.Options.Invalidator).
func NewReadCache(opts ReadCacheOptions) *ReadCache {
	if opts.Entries <= 0 {
		opts.Entries = DefaultReadCacheEntries
	}
	if opts.FreshFor <= 0 {
		opts.FreshFor = DefaultReadCacheFreshFor
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultReadCacheMaxAge
	}
	c := &ReadCache{perShard: max(1, opts.Entries/readCacheShards), freshFor: opts.FreshFor, maxAge: opts.MaxAge,
		seed: maphash.MakeSeed(), base: time.Now()}
	for i := range c.shards {
		c.shards[i].m = map[string]readCacheEntry{}
	}
	return c
}

func (c *ReadCache) now() int64 { return int64(time.Since(c.base)) }

func (c *ReadCache) shard(clerkUserID string) *readCacheShard {
	return &c.shards[maphash.String(c.seed, clerkUserID)%readCacheShards]
}

// HubStarted is called by the feed hub once it has read its starting
// head, before it hands out anything.
func (c *ReadCache) HubStarted(head int64) {
	c.head.Store(head)
	c.started.Store(true)
}

// Evict removes the users' rows; the feed hub calls it for the users of
// the events it hands out, before it moves its head past them.
func (c *ReadCache) Evict(clerkUserIDs ...string) {
	for _, id := range clerkUserIDs {
		if id == "" {
			continue
		}
		sh := c.shard(id)
		sh.mu.Lock()
		sh.gen++
		if _, ok := sh.m[id]; ok {
			delete(sh.m, id)
			c.evictions.Add(1)
		}
		sh.mu.Unlock()
	}
}

// HubAdvanced is called by the feed hub after it has handed out every
// event whose order is below head (and evicted their users); every event
// committed before the local time coveredAt is among them.
func (c *ReadCache) HubAdvanced(head int64, coveredAt time.Time) {
	atomicMax(&c.head, head)
	if !coveredAt.IsZero() {
		atomicMax(&c.coveredAt, int64(coveredAt.Sub(c.base)))
	}
}

// Fence records that a statement that may have written ended now: no read
// is served from the cache until the hub has covered it.
func (c *ReadCache) Fence() { atomicMax(&c.fence, c.now()) }

func atomicMax(a *atomic.Int64, v int64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// serves reports whether a read of ctx may be answered from the cache.
func (c *ReadCache) serves(ctx context.Context) bool {
	at := c.coveredAt.Load()
	if at == 0 || c.now()-at > int64(c.freshFor) {
		return false
	}
	if at <= c.fence.Load() && !c.breaks(BreakLocalWrites) {
		return false
	}
	if t := consistency.ReadToken(ctx); t.Xid != 0 && int64(t.Xid) > c.head.Load() && !c.breaks(BreakTokens) {
		return false
	}
	return true
}

// Serving reports whether a read without a token may be answered from
// the cache now: the hub is within FreshFor and past the write fence.
func (c *ReadCache) Serving() bool { return c.serves(context.Background()) }

// get returns the cached row of the user, if the read may have it.
func (c *ReadCache) get(ctx context.Context, clerkUserID string) (sqlcdb.GetUserByClerkIDIncludingDeletedRow, bool) {
	if !c.serves(ctx) {
		return sqlcdb.GetUserByClerkIDIncludingDeletedRow{}, false
	}
	sh := c.shard(clerkUserID)
	sh.mu.Lock()
	e, ok := sh.m[clerkUserID]
	if ok && c.now()-e.readAt > int64(c.maxAge) {
		delete(sh.m, clerkUserID)
		ok = false
	}
	sh.mu.Unlock()
	if !ok {
		return sqlcdb.GetUserByClerkIDIncludingDeletedRow{}, false
	}
	c.hits.Add(1)
	return e.row, true
}

// fillTicket is what fill needs of the read it keeps: its shard's
// generation, and when it began.
type fillTicket struct {
	gen, at int64
}

// note returns the ticket of a read about to start, false if it may not
// fill at all.
func (c *ReadCache) note(clerkUserID string) (fillTicket, bool) {
	if !c.started.Load() {
		return fillTicket{}, false
	}
	at := c.now()
	sh := c.shard(clerkUserID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return fillTicket{gen: sh.gen, at: at}, true
}

// fill keeps a row read by a statement that started after note returned
// gen, unless an eviction hit the shard meanwhile (the row may predate a
// write whose eviction is done) or its balance depends on the time.
func (c *ReadCache) fill(clerkUserID string, t fillTicket, row sqlcdb.GetUserByClerkIDIncludingDeletedRow) {
	if row.ExpiringCredits > 0 {
		c.notCached.Add(1)
		return
	}
	if d := c.fillDelay.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	sh := c.shard(clerkUserID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if t.gen != sh.gen && !c.breaks(BreakGenerations) {
		c.refused.Add(1)
		return
	}
	if _, ok := sh.m[clerkUserID]; !ok && len(sh.m) >= c.perShard {
		for k := range sh.m { // a random one (map order)
			delete(sh.m, k)
			break
		}
	}
	sh.m[clerkUserID] = readCacheEntry{row: row, readAt: t.at}
}

// ReadCacheStats counts what the cache did.
type ReadCacheStats struct {
	// Hits are reads answered from the cache; Misses those it could not
	// answer (not kept, or not servable then).
	Hits, Misses int64
	// Refused are fills refused because an eviction hit the row's shard
	// while it was read; NotCached rows never kept (expiring credits).
	Refused, NotCached int64
	// Evictions are rows removed because their user changed.
	Evictions int64
	// Entries is how many rows are kept.
	Entries int
}

// Stats returns the counters.
func (c *ReadCache) Stats() ReadCacheStats {
	s := ReadCacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Refused: c.refused.Load(),
		NotCached: c.notCached.Load(), Evictions: c.evictions.Load()}
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		s.Entries += len(sh.m)
		sh.mu.Unlock()
	}
	return s
}

// FenceTracer is a pgx QueryTracer that raises the cache's write fence
// when a statement ends whose context is not Unfenced (every statement
// of the pool but the reads of read-only calls, the user reads, the
// feed's reads and the personal writes that evict their user
// themselves), and marks the call's consistency.Recorder, if any, so
// that its answer carries a token. Set
// it on the pool with SetCache once the cache exists; until then it does
// nothing.
type FenceTracer struct {
	cache atomic.Pointer[ReadCache]
}

// SetCache makes the tracer fence c.
func (t *FenceTracer) SetCache(c *ReadCache) { t.cache.Store(c) }

func (t *FenceTracer) ended(ctx context.Context) {
	c := t.cache.Load()
	if c == nil {
		return
	}
	if consistency.IsUnfenced(ctx) {
		return
	}
	if r := consistency.RecorderOf(ctx); r != nil {
		r.MarkRan()
	}
	c.Fence()
}

func (t *FenceTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (t *FenceTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	t.ended(ctx)
}

func (t *FenceTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (t *FenceTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (t *FenceTracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchEndData) {
	t.ended(ctx)
}

func (t *FenceTracer) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	return ctx
}

func (t *FenceTracer) TraceCopyFromEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromEndData) {
	t.ended(ctx)
}

// stmtFeedXid is read in a write's own transaction after its statements:
// above the order of every event they wrote (its own xid, or an earlier
// committed event's, below the xmax of any later snapshot).
const stmtFeedXid = `SELECT greatest(coalesce(pg_current_xact_id_if_assigned()::text::bigint + 1, 0),
	pg_snapshot_xmax(pg_current_snapshot())::text::bigint)`

// FeedXidNow returns a transaction id above the feed order of every event
// committed before the call: the token of writes that ended before it.
func (s *Store) FeedXidNow(ctx context.Context) (uint64, error) {
	var x int64
	err := s.db.QueryRow(consistency.Unfenced(ctx), stmtFeedXid).Scan(&x)
	return uint64(x), err
}
