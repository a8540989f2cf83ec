package grpcapi

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
)

// TestWatchCounter: a caller's N+1th stream is refused while its N are
// open, one released admits another, other callers are unaffected, the
// server-wide bound holds across callers, and a release counts once.
func TestWatchCounter(t *testing.T) {
	t.Parallel()
	alice := auth.Principal{Kind: auth.KindUser, ClerkUserID: "user_alice"}
	bob := auth.Principal{Kind: auth.KindUser, ClerkUserID: "user_bob"}
	billing := auth.Principal{Kind: auth.KindService, Service: "billing"}
	var rejected []string
	c := newWatchCounter(WatchLimits{Total: 4, PerUser: 2, PerService: 3, Rejected: func(l string) { rejected = append(rejected, l) }})
	releases := map[string][]func(){}
	type step struct {
		name    string
		who     auth.Principal
		release bool   // release one of who's streams instead of opening one
		refused string // "" admitted, else the limit that refuses
	}
	for i, s := range []step{
		{name: "alice 1", who: alice},
		{name: "alice 2", who: alice},
		{name: "alice 3: over her 2", who: alice, refused: "caller"},
		{name: "bob unaffected", who: bob},
		{name: "billing 1", who: billing},
		{name: "alice releases one", who: alice, release: true},
		{name: "alice admitted again", who: alice},
		{name: "alice over again", who: alice, refused: "caller"},
		{name: "billing 2: server full (4)", who: billing, refused: "server"},
		{name: "bob releases", who: bob, release: true},
		{name: "billing 2", who: billing},
		{name: "bob: server full", who: bob, refused: "server"},
	} {
		if s.release {
			rs := releases[s.who.Name()]
			rs[0]()
			rs[0]() // a second release of the same stream changes nothing
			releases[s.who.Name()] = rs[1:]
			continue
		}
		before := len(rejected)
		release, err := c.acquire(s.who)
		switch {
		case s.refused == "" && err != nil:
			t.Fatalf("step %d (%s): refused: %v", i, s.name, err)
		case s.refused != "" && err == nil:
			t.Fatalf("step %d (%s): admitted, want refused by the %s limit", i, s.name, s.refused)
		case s.refused != "":
			e, ok := apperr.As(err)
			if !ok || e.Kind != apperr.KindResourceExhausted || e.RetryAfter != WatchRetryAfter {
				t.Errorf("step %d (%s): %v, want resource exhausted with a retry hint", i, s.name, err)
			}
			if len(rejected) != before+1 || rejected[before] != s.refused {
				t.Errorf("step %d (%s): rejections recorded %v, want one more %q", i, s.name, rejected[before:], s.refused)
			}
		default:
			releases[s.who.Name()] = append(releases[s.who.Name()], release)
		}
	}
	for _, rs := range releases {
		for _, r := range rs {
			r()
		}
	}
	if c.total != 0 || len(c.caller) != 0 {
		t.Errorf("after every release: total %d, callers %v", c.total, c.caller)
	}
}

// TestWatchCounterConcurrent: 200 goroutines of one caller race for 7
// places; exactly 7 win, and after they release, 7 win again.
func TestWatchCounterConcurrent(t *testing.T) {
	t.Parallel()
	c := newWatchCounter(WatchLimits{Total: 1000, PerUser: 7, PerService: 7})
	p := auth.Principal{Kind: auth.KindUser, ClerkUserID: "user_racer"}
	for round := range 2 {
		var (
			wg       sync.WaitGroup
			admitted atomic.Int32
			mu       sync.Mutex
			releases []func()
		)
		start := make(chan struct{})
		for range 200 {
			wg.Go(func() {
				<-start
				if r, err := c.acquire(p); err == nil {
					admitted.Add(1)
					mu.Lock()
					releases = append(releases, r)
					mu.Unlock()
				}
			})
		}
		close(start)
		wg.Wait()
		if n := admitted.Load(); n != 7 {
			t.Errorf("round %d: %d of 200 admitted, want 7", round, n)
		}
		var rw sync.WaitGroup
		for _, r := range releases {
			rw.Go(r)
		}
		rw.Wait()
	}
	if c.total != 0 {
		t.Errorf("total %d after every release", c.total)
	}
}
