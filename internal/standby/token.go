// Package standby serves reads from hot standbys without ever showing a
// caller state older than what it has already seen acknowledged.
//
// Writes: a call whose context carries a Recorder (WithRecorder, set by
// the transport for every call that may write) runs each statement on
// the primary as BEGIN; statement; COMMIT; SELECT
// pg_current_wal_insert_lsn() — one network round trip (a pgx batch,
// pipelined) — so the position read is at or past the end of the
// statement's commit record. The transport hands the largest position
// back to the client as an opaque Token.
//
// Reads: a call whose context allows it (AllowStandby, set by the
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

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"sync"
)

// Header is the gRPC metadata key of a consistency token, in a write's
// response header and in a read's request metadata; over HTTP it is the
// header HTTPHeader.
const (
	Header     = "userd-consistency-token"
	HTTPHeader = "Userd-Consistency-Token"
)

// tokenV1 is the first byte of a version-1 token: then 8 bytes of WAL
// position, big-endian.
const tokenV1 = 1

// Token is a consistency token: a WAL position of the primary at or past
// the commit of the writes it was issued for. Clients treat its text as
// opaque.
type Token struct{ LSN uint64 }

// String is the token's text: unpadded base64url of a version byte and
// the position.
func (t Token) String() string {
	var b [9]byte
	b[0] = tokenV1
	binary.BigEndian.PutUint64(b[1:], t.LSN)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// ErrBadToken is returned for a token this package did not make.
var ErrBadToken = errors.New("not a consistency token returned by this API")

// ParseToken reads a token's text.
func ParseToken(s string) (Token, error) {
	if len(s) != 12 { // base64 of 9 bytes
		return Token{}, ErrBadToken
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != 9 || b[0] != tokenV1 {
		return Token{}, ErrBadToken
	}
	t := Token{LSN: binary.BigEndian.Uint64(b[1:])}
	if t.LSN == 0 {
		return Token{}, ErrBadToken
	}
	return t, nil
}

type (
	policyKey   struct{}
	recorderKey struct{}
)

// policy is what a read's context allows.
type policy struct {
	// minLSN is the caller's token (0: none).
	minLSN uint64
}

// AllowStandby lets the reads of ctx run on a standby that has replayed
// at least min (the zero Token: any standby within the lag bound).
func AllowStandby(ctx context.Context, min Token) context.Context {
	return context.WithValue(ctx, policyKey{}, policy{minLSN: min.LSN})
}

func policyOf(ctx context.Context) (policy, bool) {
	p, ok := ctx.Value(policyKey{}).(policy)
	return p, ok
}

// Recorder collects the WAL positions after the statements of one call.
type Recorder struct {
	mu  sync.Mutex
	lsn uint64
}

// WithRecorder returns ctx with a new Recorder: the primary's statements
// of ctx record their position in it.
func WithRecorder(ctx context.Context) (context.Context, *Recorder) {
	r := &Recorder{}
	return context.WithValue(ctx, recorderKey{}, r), r
}

func recorderOf(ctx context.Context) *Recorder {
	r, _ := ctx.Value(recorderKey{}).(*Recorder)
	return r
}

func (r *Recorder) observe(lsn uint64) {
	r.mu.Lock()
	r.lsn = max(r.lsn, lsn)
	r.mu.Unlock()
}

// Token returns the token of every statement recorded, false if none ran.
func (r *Recorder) Token() (Token, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Token{LSN: r.lsn}, r.lsn != 0
}
