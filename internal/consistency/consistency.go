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
	"math"
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
// position, big-endian. tokenV2 is the first byte of a version-2 token:
// then 8 bytes of transaction id, big-endian (Token.Xid).
const (
	tokenV1 = 1
	tokenV2 = 2
)

// Token is a consistency token. Version 1 (LSN set): a WAL position of the
// primary at or past the commit of the writes it was issued for, for
// reads from standbys. Version 2 (Xid set): a transaction id above the
// change-feed order (order_xid) of every event the writes wrote, for the
// read cache (internal/store/readcache.go): a replica whose feed hub has
// handed out every event below it has evicted every user they changed.
// Clients treat its text as opaque.
type Token struct {
	LSN uint64
	Xid uint64
}

// String is the token's text: unpadded base64url of a version byte and
// the position.
func (t Token) String() string {
	var b [9]byte
	b[0] = tokenV1
	v := t.LSN
	if t.Xid != 0 {
		b[0], v = tokenV2, t.Xid
	}
	binary.BigEndian.PutUint64(b[1:], v)
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
	if err != nil || len(b) != 9 {
		return Token{}, ErrBadToken
	}
	v := binary.BigEndian.Uint64(b[1:])
	switch {
	case v == 0:
	case b[0] == tokenV1:
		return Token{LSN: v}, nil
	case b[0] == tokenV2 && v <= math.MaxInt64: // an xid8, kept as bigint
		return Token{Xid: v}, nil
	}
	return Token{}, ErrBadToken
}

type (
	policyKey   struct{}
	recorderKey struct{}
	readKey     struct{}
	unfencedKey struct{}
)

// WithReadToken records, for the read cache, the token a call sent (the
// zero Token: none): its reads must see the writes the token was issued
// for.
func WithReadToken(ctx context.Context, t Token) context.Context {
	return context.WithValue(ctx, readKey{}, t)
}

// ReadToken returns the token WithReadToken recorded (the zero Token if
// none).
func ReadToken(ctx context.Context) Token {
	t, _ := ctx.Value(readKey{}).(Token)
	return t
}

// Unfenced marks the statements of ctx as ones the read cache's write
// fence ignores: reads, and writes that evict the users they change
// themselves (internal/store/readcache.go).
func Unfenced(ctx context.Context) context.Context {
	if IsUnfenced(ctx) {
		return ctx
	}
	return context.WithValue(ctx, unfencedKey{}, true)
}

// IsUnfenced reports whether Unfenced marked ctx.
func IsUnfenced(ctx context.Context) bool {
	v, _ := ctx.Value(unfencedKey{}).(bool)
	return v
}

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

// Recorder collects the WAL positions after the statements of one call
// or, for the read cache, the feed transaction ids of its writes.
type Recorder struct {
	mu  sync.Mutex
	lsn uint64
	xid uint64
	// ran: a statement of the call ran without recording an xid (MarkRan).
	ran bool
}

// ObserveXid records a transaction id above the feed order of the events
// a statement of the call wrote.
func (r *Recorder) ObserveXid(xid uint64) {
	r.mu.Lock()
	r.xid = max(r.xid, xid)
	r.mu.Unlock()
}

// MarkRan records that a statement ran in the call's context: it may
// have written without recording an xid.
func (r *Recorder) MarkRan() {
	r.mu.Lock()
	r.ran = true
	r.mu.Unlock()
}

// CacheToken returns the version-2 token of the xids recorded (false if
// none), and whether a statement ran that recorded none.
func (r *Recorder) CacheToken() (t Token, ok, ran bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Token{Xid: r.xid}, r.xid != 0, r.ran
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
