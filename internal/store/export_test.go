package store

import "github.com/userd/userd/gen/sqlcdb"

// UserReadsPending is how many reads of a user by Clerk id wait for a
// batch, and UserReadsBatched how many were answered by a statement of
// several ids (readbatch.go).
func UserReadsPending(s *Store) int {
	s.userReads.mu.Lock()
	defer s.userReads.mu.Unlock()
	return len(s.userReads.pending)
}

func UserReadsBatched(s *Store) int64 { return s.userReads.batched.Load() }

// HoldWriteBatches makes s run one write batch at a time and hold every
// batch until release is called, so that a test can queue calls into one
// batch (QueuedWrites tells how many wait).
func HoldWriteBatches(s *Store) (release func()) {
	// The batches of earlier calls end first: one still running would
	// take the calls queued next without the gate.
	s.writes.running.Wait()
	gate := make(chan struct{})
	s.writes.gate, s.writes.lanes = gate, s.writes.lanes[:1]
	return func() { close(gate) }
}

// QueuedWrites is how many calls wait for a write batch (or, their
// account set aside, for their turn).
func QueuedWrites(s *Store) int {
	n := 0
	for _, l := range s.writes.lanes {
		l.mu.Lock()
		n += l.waiting()
		l.mu.Unlock()
	}
	return n
}

// AccountsSetAside is how many accounts' writes run set aside from the
// batches, each behind a lock held outside them.
func AccountsSetAside(s *Store) int {
	n := 0
	for _, l := range s.writes.lanes {
		l.mu.Lock()
		n += len(l.aside)
		l.mu.Unlock()
	}
	return n
}

// BatchedDBTX is where a write keyed by lockKey runs (Store.batched).
func BatchedDBTX(s *Store, lockKey string) sqlcdb.DBTX { return s.batched(lockKey) }

// SetWriteLanes gives s n write lanes (benchmarks).
func SetWriteLanes(s *Store, n int) {
	s.writes = newWriteBatcher(s.db, s.acquire, n)
}

// SetBatchLockWait sets how long s's write batches wait for a row lock
// ("0": as long as the session allows), so that a test can keep a batch
// waiting on a lock it holds.
func SetBatchLockWait(s *Store, wait string) { s.writes.lockWait = wait }

// SetWriteQueueLimit bounds the calls waiting in each write lane (tests).
func SetWriteQueueLimit(s *Store, n int) { s.writes.maxQueue = n }
