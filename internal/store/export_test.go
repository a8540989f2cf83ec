package store

// UserReadsPending is how many reads of a user by Clerk id wait for a
// batch, and UserReadsBatched how many were answered by a statement of
// several ids (readbatch.go).
func UserReadsPending(s *Store) int {
	s.userReads.mu.Lock()
	defer s.userReads.mu.Unlock()
	return len(s.userReads.pending)
}

func UserReadsBatched(s *Store) int64 { return s.userReads.batched.Load() }
