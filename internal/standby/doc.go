// Package standby serves reads from hot standbys without ever showing a
// caller state older than what it has already seen acknowledged.
//
// Writes: a call whose context carries a Recorder (consistency.WithRecorder, set by
// the transport for every call that may write) runs each statement on
// the primary as BEGIN; statement; COMMIT; SELECT
// pg_current_wal_insert_lsn() — one network round trip (a pgx batch,
// pipelined) — so the position read is at or past the end of the
// statement's commit record. The transport hands the largest position
// back to the client as an opaque consistency.Token.
//
// Reads: a call whose context allows it (consistency.AllowStandby, set by the
// transport for the read-only methods) runs each read on a standby, as
// SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(); statement — again
// one round trip — and keeps the result only if the standby is in
// recovery and has replayed at least the caller's token (waiting for it
// at most Options.TokenWait), or, without a token, if the standby's
// measured staleness is within Options.MaxLag; otherwise the read runs
// on the primary. Replay only moves forward while a standby runs, so the
// statement's snapshot, taken after the check, shows everything up to the
// position checked.
package standby
