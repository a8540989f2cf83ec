package feed_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/userd/userd/internal/feed"
)

func key(id byte, fill byte) feed.CursorKey {
	return feed.CursorKey{ID: id, Secret: bytes.Repeat([]byte{fill}, 32)}
}

func mustCursors(t *testing.T, keys ...feed.CursorKey) *feed.Cursors {
	t.Helper()
	c, err := feed.NewStaticCursors(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func format(t *testing.T, c *feed.Cursors, p feed.Position) string {
	t.Helper()
	s, err := c.Format(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCursorsAreOpaque (issue 18, item 7): a cursor round-trips, is the
// same for the same position, and reveals nothing of it — neither the
// transaction id nor the event id appears in it or in its bytes.
func TestCursorsAreOpaque(t *testing.T) {
	t.Parallel()
	c := mustCursors(t, key(1, 7))
	p := feed.Position{Xid: 987654321, ID: 4242}
	s := format(t, c, p)
	if got, err := c.Parse(context.Background(), s); err != nil || got != p {
		t.Fatalf("Parse(Format(%v)) = %v, %v", p, got, err)
	}
	if again := format(t, c, p); again != s {
		t.Errorf("the same position made two cursors: %s, %s", s, again)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(s)
	for _, leak := range []string{"ev1", strconv.FormatInt(p.Xid, 10), strconv.FormatInt(p.ID, 10)} {
		if strings.Contains(s, leak) || bytes.Contains(raw, []byte(leak)) {
			t.Errorf("cursor %s shows %q", s, leak)
		}
	}
	next := format(t, c, feed.Position{Xid: p.Xid, ID: p.ID + 1})
	if common := commonPrefix(s, next); common > 4 {
		t.Errorf("cursors of neighbouring positions share %d leading characters: %s, %s", common, s, next)
	}
}

func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// TestForgedCursorsAreRefused: every alteration of a cursor, a cursor of
// another deployment and garbage are the one "not a cursor" error.
func TestForgedCursorsAreRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := mustCursors(t, key(1, 7))
	good := format(t, c, feed.Position{Xid: 1000, ID: 5})
	raw, _ := base64.RawURLEncoding.DecodeString(good)
	var bad []string
	for i := range raw {
		flipped := bytes.Clone(raw)
		flipped[i] ^= 0x01
		bad = append(bad, base64.RawURLEncoding.EncodeToString(flipped))
	}
	other := mustCursors(t, key(1, 8))
	bad = append(bad,
		base64.RawURLEncoding.EncodeToString(raw[:len(raw)-1]),
		base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw), 0)),
		format(t, other, feed.Position{Xid: 1000, ID: 5}), // another deployment's
		good+"A", good[:len(good)-1], "", "%%%", "\x00", "bm90LWEtY3Vyc29y",
		base64.RawURLEncoding.EncodeToString([]byte("ev1:-1.5")),
		base64.RawURLEncoding.EncodeToString([]byte("ev1:1.2.3")),
		base64.RawURLEncoding.EncodeToString([]byte("ev2:1.2")),
	)
	for _, s := range bad {
		if p, err := c.Parse(ctx, s); !feed.IsBadCursor(err) {
			t.Errorf("Parse(%q) = %v, %v; want a bad cursor", s, p, err)
		}
	}
	// The first form is still accepted (transition).
	if p, err := c.Parse(ctx, feed.LegacyCursor(feed.Position{Xid: 12, ID: 3})); err != nil || p != (feed.Position{Xid: 12, ID: 3}) {
		t.Errorf("legacy cursor: %v, %v", p, err)
	}
}

// TestCursorKeyRotation: cursors sealed with a new key open on a replica
// that started before the key existed (it reads the keys again), and old
// cursors still open after the rotation.
func TestCursorKeyRotation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var keys atomic.Pointer[[]feed.CursorKey]
	first := []feed.CursorKey{key(1, 7)}
	keys.Store(&first)
	var reads atomic.Int32
	source := func(context.Context) ([]feed.CursorKey, error) { reads.Add(1); return *keys.Load(), nil }
	old := feed.NewCursors(source)
	p := feed.Position{Xid: 77, ID: 7}
	before := format(t, old, p)

	rotated := []feed.CursorKey{key(1, 7), key(2, 9)}
	keys.Store(&rotated)
	fresh := feed.NewCursors(source)
	after := format(t, fresh, p)
	if after == before {
		t.Fatal("the new key was not used")
	}
	for name, c := range map[string]*feed.Cursors{"old replica": old, "new replica": fresh} {
		for _, s := range []string{before, after} {
			if got, err := c.Parse(ctx, s); err != nil || got != p {
				t.Errorf("%s: Parse = %v, %v", name, got, err)
			}
		}
	}
	// Forged key ids do not turn into reads of the keys (at most one per
	// reloadEvery).
	n := reads.Load()
	raw, _ := base64.RawURLEncoding.DecodeString(after)
	for id := 3; id < 50; id++ {
		raw[1] = byte(id)
		if _, err := old.Parse(ctx, base64.RawURLEncoding.EncodeToString(raw)); !feed.IsBadCursor(err) {
			t.Fatalf("key id %d: %v", id, err)
		}
	}
	if extra := reads.Load() - n; extra > 1 {
		t.Errorf("47 unknown key ids read the keys %d times", extra)
	}
	if _, err := feed.NewStaticCursors(feed.CursorKey{ID: 1, Secret: []byte("short")}); err == nil {
		t.Error("a short secret was accepted")
	}
	failing := feed.NewCursors(func(context.Context) ([]feed.CursorKey, error) { return nil, errors.New("db down") })
	if _, err := failing.Format(ctx, p); err == nil || feed.IsBadCursor(err) {
		t.Errorf("keys unavailable: %v, want an error that is not a bad cursor", err)
	}
}

// BenchmarkCursor measures what sealing costs per event sent (Format) and
// per resumed watch (Parse).
func BenchmarkCursor(b *testing.B) {
	c, err := feed.NewStaticCursors(feed.CursorKey{ID: 1, Secret: bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	p := feed.Position{Xid: 123456789, ID: 987654}
	b.Run("Format", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			p.ID = int64(i)
			if _, err := c.Format(ctx, p); err != nil {
				b.Fatal(err)
			}
		}
	})
	s, _ := c.Format(ctx, p)
	b.Run("Parse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Parse(ctx, s); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Legacy", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = feed.LegacyCursor(p)
		}
	})
}
