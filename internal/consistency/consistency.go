// Package consistency is the consistency token of reads from standbys and
// what a call's context says about it, shared by the transports (which
// read and send tokens) and internal/standby (which routes the reads and
// records the writes' positions); it knows nothing of either.
package consistency

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

// AllowStandby lets the reads of ctx run on a standby that has replayed
// at least min (the zero Token: any standby within the lag bound).
func AllowStandby(ctx context.Context, min Token) context.Context {
	return context.WithValue(ctx, policyKey{}, min)
}

// PrimaryOnly takes back what AllowStandby allowed: the reads of the
// returned context run on the primary.
func PrimaryOnly(ctx context.Context) context.Context {
	if _, ok := StandbyAllowed(ctx); !ok {
		return ctx
	}
	return context.WithValue(ctx, policyKey{}, nil)
}

// StandbyAllowed reports whether ctx lets its reads run on a standby, and
// the token the standby must have replayed (zero: none).
func StandbyAllowed(ctx context.Context) (Token, bool) {
	t, ok := ctx.Value(policyKey{}).(Token)
	return t, ok
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

// RecorderOf returns the Recorder of ctx, nil if none.
func RecorderOf(ctx context.Context) *Recorder {
	r, _ := ctx.Value(recorderKey{}).(*Recorder)
	return r
}

// Observe records a position read after a statement committed.
func (r *Recorder) Observe(lsn uint64) {
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
