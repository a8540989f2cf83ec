package grpcapi

import (
	"fmt"
	"sync"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
)

// WatchRetryAfter is the retry hint of a refused watch: a caller at its
// limit can only be admitted once one of its streams ends, which a
// consumer that lost track of one notices within a heartbeat or two.
const WatchRetryAfter = 10 * time.Second

// WatchLimits bound the WatchUserEvents streams open at once on this
// replica, gRPC and REST together: per caller — an end user (by Clerk user
// id) or a service (by token name) — and in all. Each stream holds a
// goroutine, a queue and, over REST, a connection: without a bound, one
// end user with a 60-second session token opened 20,000 of them (issue 18).
type WatchLimits struct {
	Total, PerUser, PerService int
	// Rejected, when set, is told of each refusal: "caller" or "server".
	Rejected func(limit string)
}

// watchCounter counts the open streams. A stream takes its place before
// it starts and gives it back however it ends.
type watchCounter struct {
	lim WatchLimits

	mu     sync.Mutex
	total  int
	caller map[string]int
}

func newWatchCounter(lim WatchLimits) *watchCounter {
	if lim.Rejected == nil {
		lim.Rejected = func(string) {}
	}
	return &watchCounter{lim: lim, caller: map[string]int{}}
}

// acquire takes a place for one stream of p, or refuses with
// RESOURCE_EXHAUSTED; release gives it back (once).
func (c *watchCounter) acquire(p auth.Principal) (release func(), err error) {
	key, most := p.Name(), c.lim.PerService
	if p.Kind == auth.KindUser {
		most = c.lim.PerUser
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.caller[key] >= most:
		c.lim.Rejected("caller")
		return nil, apperr.ResourceExhausted(fmt.Sprintf(
			"too many change feed streams open: at most %d per caller; close one, or retry later", most), WatchRetryAfter)
	case c.total >= c.lim.Total:
		c.lim.Rejected("server")
		return nil, apperr.ResourceExhausted("this server has as many change feed streams open as it serves: retry later", WatchRetryAfter)
	}
	c.caller[key]++
	c.total++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.total--
			if c.caller[key]--; c.caller[key] == 0 {
				delete(c.caller, key)
			}
		})
	}, nil
}
