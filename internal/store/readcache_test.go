package store

import (
	"context"
	"testing"
	"time"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/consistency"
)

// sameShard returns a Clerk id other than id in id's shard.
func sameShard(c *ReadCache, id string) string {
	for i := 0; ; i++ {
		other := id + "_" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676%26))
		if c.shard(other) == c.shard(id) {
			return other
		}
	}
}

func servingCache(t *testing.T) *ReadCache {
	t.Helper()
	c := NewReadCache(ReadCacheOptions{})
	c.HubStarted(100)
	c.HubAdvanced(100, time.Now())
	if !c.Serving() {
		t.Fatal("a cache whose hub just advanced does not serve")
	}
	return c
}

func row(credits int64) sqlcdb.GetUserByClerkIDIncludingDeletedRow {
	return sqlcdb.GetUserByClerkIDIncludingDeletedRow{ClerkUserID: "user_x", Credits: credits}
}

// TestReadCacheGenerations: a fill is kept only if no eviction hit its
// shard between note and fill (whatever user it evicted), unless the rule
// is broken on purpose.
func TestReadCacheGenerations(t *testing.T) {
	ctx := context.Background()
	c := servingCache(t)
	gen, ok := c.note("user_a")
	if !ok {
		t.Fatal("note refused on a started cache")
	}
	c.fill("user_a", gen, row(1))
	if r, ok := c.get(ctx, "user_a"); !ok || r.Credits != 1 {
		t.Fatalf("get = %v %v, want the row filled", r.Credits, ok)
	}
	for _, evicted := range []string{"user_a", sameShard(c, "user_a")} {
		gen, _ := c.note("user_a")
		c.Evict(evicted)
		c.fill("user_a", gen, row(2)) // read before the eviction: refused
		if r, ok := c.get(ctx, "user_a"); ok && r.Credits == 2 {
			t.Errorf("a fill raced by an eviction of %s was kept", evicted)
		}
		gen, _ = c.note("user_a") // read after it: kept
		c.fill("user_a", gen, row(3))
		if r, ok := c.get(ctx, "user_a"); !ok || r.Credits != 3 {
			t.Errorf("a fill after the eviction of %s: get = %v %v", evicted, r.Credits, ok)
		}
	}
	if s := c.Stats(); s.Refused != 2 {
		t.Errorf("refused = %d, want 2", s.Refused)
	}
	c.BreakForTest(BreakGenerations, 0)
	gen, _ = c.note("user_a")
	c.Evict("user_a")
	c.fill("user_a", gen, row(4))
	if r, ok := c.get(ctx, "user_a"); !ok || r.Credits != 4 {
		t.Error("with the rule broken the raced fill is kept: the rule is what refuses it")
	}
}

// TestReadCacheNotStarted: before the hub read its starting head nothing
// is filled (an event below that head would never evict it).
func TestReadCacheNotStarted(t *testing.T) {
	c := NewReadCache(ReadCacheOptions{})
	if _, ok := c.note("user_a"); ok {
		t.Error("note allowed a fill before the hub started")
	}
	if c.Serving() {
		t.Error("serving before the hub advanced")
	}
}

// TestReadCacheServes: reads are served only while the hub covers a
// recent time past the write fence, and, with a token, a head at or past
// it.
func TestReadCacheServes(t *testing.T) {
	c := NewReadCache(ReadCacheOptions{FreshFor: 50 * time.Millisecond})
	c.HubStarted(100)
	c.HubAdvanced(100, time.Now())
	tok := func(x uint64) context.Context {
		return consistency.WithReadToken(context.Background(), consistency.Token{Xid: x})
	}
	if !c.serves(tok(100)) || !c.serves(tok(0)) {
		t.Error("a token at the head is not served")
	}
	if c.serves(tok(101)) {
		t.Error("a token past the head is served")
	}
	c.BreakForTest(BreakTokens, 0)
	if !c.serves(tok(101)) {
		t.Error("BreakTokens does not break the token rule")
	}
	c.BreakForTest(0, 0)
	c.HubAdvanced(101, time.Time{})
	if !c.serves(tok(101)) {
		t.Error("a token at the advanced head is not served")
	}
	c.Fence()
	if c.Serving() {
		t.Error("served past the write fence")
	}
	c.BreakForTest(BreakLocalWrites, 0)
	if !c.Serving() {
		t.Error("BreakLocalWrites does not break the fence")
	}
	c.BreakForTest(0, 0)
	c.HubAdvanced(101, time.Now())
	if !c.Serving() {
		t.Error("not served once the hub covered the fence")
	}
	time.Sleep(60 * time.Millisecond)
	if c.Serving() {
		t.Error("served with the hub behind more than FreshFor")
	}
}

// TestReadCacheKeepsNoTimeDependentRow: a row with expiring credits reads
// a balance that changes without a write: never kept.
func TestReadCacheKeepsNoTimeDependentRow(t *testing.T) {
	c := servingCache(t)
	gen, _ := c.note("user_a")
	r := row(5)
	r.ExpiringCredits = 1
	c.fill("user_a", gen, r)
	if _, ok := c.get(context.Background(), "user_a"); ok {
		t.Error("a row with expiring credits was kept")
	}
}

// TestReadCacheBounded: past its entries the cache drops rows.
func TestReadCacheBounded(t *testing.T) {
	c := NewReadCache(ReadCacheOptions{Entries: 2 * readCacheShards})
	c.HubStarted(1)
	for i := range 10_000 {
		id := "user_" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676%26))
		gen, _ := c.note(id)
		c.fill(id, gen, row(int64(i)))
	}
	if n := c.Stats().Entries; n > 2*readCacheShards {
		t.Errorf("%d entries kept, bound %d", n, 2*readCacheShards)
	}
}

// TestReadCacheMaxAge: a row is kept at most MaxAge (changes of
// update_time alone write no event).
func TestReadCacheMaxAge(t *testing.T) {
	c := NewReadCache(ReadCacheOptions{FreshFor: time.Hour, MaxAge: 30 * time.Millisecond})
	c.HubStarted(1)
	c.HubAdvanced(1, time.Now())
	tk, _ := c.note("user_a")
	c.fill("user_a", tk, row(1))
	if _, ok := c.get(context.Background(), "user_a"); !ok {
		t.Fatal("a fresh row is not served")
	}
	time.Sleep(40 * time.Millisecond)
	if _, ok := c.get(context.Background(), "user_a"); ok {
		t.Error("a row older than MaxAge is served")
	}
}
