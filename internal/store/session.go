package store

import (
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// SessionTimeouts are PostgreSQL's own bounds on userd's sessions. The
// server enforces them even when userd can no longer reach it: a statement
// left running, a lock wait queued behind a stuck transaction, or a
// transaction whose client vanished are ended there, and their locks
// freed. A zero field leaves the server's (or role's) setting.
type SessionTimeouts struct {
	// Statement is statement_timeout: the longest one statement may run.
	Statement time.Duration
	// Lock is lock_timeout: the longest one statement may wait for a lock.
	Lock time.Duration
	// IdleInTransaction is idle_in_transaction_session_timeout: the
	// longest a session may sit inside a transaction without a statement.
	// userd's calls hold no transaction open between round trips, so an
	// idle one belongs to a client (or a start-up migration) that stalled
	// or vanished, and would keep its locks until the connection dies.
	IdleInTransaction time.Duration
}

// Apply sets the timeouts as run-time parameters of every connection made
// with cc: they travel in the startup message, so they cost no round trip
// and hold from a connection's first statement. They replace the same
// parameters given in the database URL.
func (t SessionTimeouts) Apply(cc *pgx.ConnConfig) {
	for name, d := range map[string]time.Duration{
		"statement_timeout":                   t.Statement,
		"lock_timeout":                        t.Lock,
		"idle_in_transaction_session_timeout": t.IdleInTransaction,
	} {
		if d > 0 {
			cc.RuntimeParams[name] = strconv.FormatInt(d.Milliseconds(), 10)
		}
	}
}

// DisableJIT turns PostgreSQL's JIT compilation off for every connection
// made with cc, unless the database URL sets jit itself. JIT compiles a
// statement whose estimated cost passes jit_above_cost, at every
// execution, and userd's statements are short: the feed hub's poll, which
// every replica runs ten times a second, was estimated past it (a
// one-row table never analyzed looks like 1,540 rows to the planner) and
// spent about 0.75 s of CPU compiling each time, a third of PostgreSQL's
// CPU under a webhook load, to run a query of a few milliseconds.
func DisableJIT(cc *pgx.ConnConfig) {
	if _, set := cc.RuntimeParams["jit"]; !set {
		cc.RuntimeParams["jit"] = "off"
	}
}
