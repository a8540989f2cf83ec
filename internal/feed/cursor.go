package feed

import (
	"context"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/userd/userd/internal/apperr"
)

// Cursors are opaque: a position sealed with XChaCha20-Poly1305
// (authenticated encryption, from golang.org/x/crypto) under a key derived
// from one of the deployment's secrets (the feed_cursor_keys table, shared
// by every replica; see db/migrations/00008_feed_cursor_keys.sql):
//
//	base64url( 0x02 | key id | 24-byte nonce | sealed 16-byte position + 16-byte tag )
//
// A cursor therefore says nothing about the server — the position is a
// transaction id, whose growth is the database's whole write rate — and
// one that was not made by this deployment, or was altered, is refused.
//
// The nonce is synthetic (as in SIV, RFC 5297): HMAC-SHA256 of the
// position under a second derived key, cut to 24 bytes. So a position
// always has the same cursor (on every replica: a consumer can compare
// them), and two different positions never share a nonce — no counter to
// coordinate across replicas, no reliance on randomness per cursor. What
// it lets anyone learn is only whether two cursors are the same position,
// which their holder knows anyway.
//
// The first form, "ev1:<xid>.<id>" in base64url, is still accepted — not
// made — so that consumers holding one resume across the upgrade; it
// reveals nothing to its holder that the holder did not have, and the
// events it selects are filtered by the caller's rights like any other.
// It will be refused (as an invalid cursor) in a later release.
const (
	cursorVersion   = 2
	legacyPrefix    = "ev1:"
	sealedLen       = 2 + chacha20poly1305.NonceSizeX + 16 + chacha20poly1305.Overhead
	cursorKeyInfo   = "userd feed cursor v2"
	cursorNonceInfo = "userd feed cursor v2 nonce"
	minSecretBytes  = 32
)

// CursorKey is one of the deployment's cursor secrets.
type CursorKey struct {
	// ID names the key in the cursors it seals (1 to 255).
	ID byte
	// Secret is at least 32 random bytes.
	Secret []byte
}

// CursorKeySource returns the deployment's cursor keys, creating the
// first one if there is none (*store.Store's FeedCursorKeys).
type CursorKeySource func(ctx context.Context) ([]CursorKey, error)

// Cursors seals positions into cursors and opens them again. Keys are read
// from the source on first use, and again (at most every reloadEvery) when
// a cursor names a key this replica does not know yet: after a rotation,
// cursors sealed by a replica that already uses the new key open on every
// other.
type Cursors struct {
	source CursorKeySource

	mu   sync.Mutex
	ring *keyring
	// lastMiss is when an unknown key id last made Cursors read the keys.
	lastMiss time.Time
}

// reloadEvery bounds how often an unknown key id makes Cursors read the
// keys again: forged cursors must not become database reads.
const reloadEvery = 10 * time.Second

type keyring struct {
	seal  byte
	aeads map[byte]cipher.AEAD
	// nonceKeys derive each key's synthetic nonces.
	nonceKeys map[byte][]byte
}

// NewCursors returns cursors whose keys come from source.
func NewCursors(source CursorKeySource) *Cursors { return &Cursors{source: source} }

// NewStaticCursors returns cursors sealed with keys; tests and tools that
// run without a database use it.
func NewStaticCursors(keys ...CursorKey) (*Cursors, error) {
	ring, err := newKeyring(keys)
	if err != nil {
		return nil, err
	}
	return &Cursors{ring: ring}, nil
}

// newEphemeralCursors seals with a key of this process only: a Hub without
// Options.Cursors (tests) uses it.
func newEphemeralCursors() *Cursors {
	secret := make([]byte, minSecretBytes)
	_, _ = rand.Read(secret)
	c, err := NewStaticCursors(CursorKey{ID: 1, Secret: secret})
	if err != nil {
		panic(err)
	}
	return c
}

func newKeyring(keys []CursorKey) (*keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("no feed cursor key")
	}
	r := &keyring{aeads: map[byte]cipher.AEAD{}, nonceKeys: map[byte][]byte{}}
	for _, k := range keys {
		if k.ID == 0 || len(k.Secret) < minSecretBytes {
			return nil, fmt.Errorf("feed cursor key %d: id must be 1 to 255 and the secret at least %d bytes", k.ID, minSecretBytes)
		}
		key, err := hkdf.Key(sha256.New, k.Secret, nil, cursorKeyInfo, chacha20poly1305.KeySize)
		if err != nil {
			return nil, err
		}
		aead, err := chacha20poly1305.NewX(key)
		if err != nil {
			return nil, err
		}
		nonceKey, err := hkdf.Key(sha256.New, k.Secret, nil, cursorNonceInfo, sha256.Size)
		if err != nil {
			return nil, err
		}
		r.aeads[k.ID], r.nonceKeys[k.ID] = aead, nonceKey
		r.seal = max(r.seal, k.ID)
	}
	return r, nil
}

// keys returns the keyring, reading it from the source when there is none
// yet, or when want (a key id, 0 for none) is unknown and no unknown id
// made it read them in the last reloadEvery.
func (c *Cursors) keys(ctx context.Context, want byte) (*keyring, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ring != nil {
		if _, ok := c.ring.aeads[want]; want == 0 || ok || c.source == nil || time.Since(c.lastMiss) < reloadEvery {
			return c.ring, nil
		}
		c.lastMiss = time.Now()
	}
	if c.source == nil {
		return nil, errors.New("feed cursors: no keys")
	}
	keys, err := c.source(ctx)
	if err == nil {
		var ring *keyring
		if ring, err = newKeyring(keys); err == nil {
			c.ring = ring
		}
	}
	if err != nil {
		if c.ring != nil {
			// Keep serving with the keys known: an unknown id stays unknown.
			return c.ring, nil
		}
		return nil, apperr.Unavailable(fmt.Errorf("feed cursor keys: %w", err))
	}
	return c.ring, nil
}

// Format returns the cursor of p.
func (c *Cursors) Format(ctx context.Context, p Position) (string, error) {
	ring, err := c.keys(ctx, 0)
	if err != nil {
		return "", err
	}
	var plain [16]byte
	binary.BigEndian.PutUint64(plain[:8], uint64(p.Xid))
	binary.BigEndian.PutUint64(plain[8:], uint64(p.ID))
	buf := make([]byte, 2, sealedLen)
	buf[0], buf[1] = cursorVersion, ring.seal
	mac := hmac.New(sha256.New, ring.nonceKeys[ring.seal])
	mac.Write(buf)
	mac.Write(plain[:])
	buf = append(buf, mac.Sum(nil)[:chacha20poly1305.NonceSizeX]...)
	out := ring.aeads[ring.seal].Seal(buf, buf[2:2+chacha20poly1305.NonceSizeX], plain[:], buf[:2])
	return base64.RawURLEncoding.EncodeToString(out), nil
}

var errBadCursor = errors.New("not a cursor of this feed")

// IsBadCursor reports whether err is Parse's error for a cursor that is
// not one of this deployment's.
func IsBadCursor(err error) bool { return errors.Is(err, errBadCursor) }

// Parse returns the position of a cursor made by Format (or of the first,
// "ev1:" form). A cursor made elsewhere, altered or garbled is
// errBadCursor (IsBadCursor); other errors are the keys' (unavailable).
func (c *Cursors) Parse(ctx context.Context, s string) (Position, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Position{}, errBadCursor
	}
	if len(raw) != sealedLen || raw[0] != cursorVersion {
		return parseLegacy(raw)
	}
	ring, err := c.keys(ctx, raw[1])
	if err != nil {
		return Position{}, err
	}
	aead, ok := ring.aeads[raw[1]]
	if !ok {
		return Position{}, errBadCursor
	}
	plain, err := aead.Open(nil, raw[2:2+chacha20poly1305.NonceSizeX], raw[2+chacha20poly1305.NonceSizeX:], raw[:2])
	if err != nil || len(plain) != 16 {
		return Position{}, errBadCursor
	}
	p := Position{Xid: int64(binary.BigEndian.Uint64(plain[:8])), ID: int64(binary.BigEndian.Uint64(plain[8:]))}
	if p.Xid < 0 || p.ID < 0 {
		return Position{}, errBadCursor
	}
	return p, nil
}

// parseLegacy reads the first form, "ev1:<xid>.<id>".
func parseLegacy(raw []byte) (Position, error) {
	rest, ok := strings.CutPrefix(string(raw), legacyPrefix)
	if !ok {
		return Position{}, errBadCursor
	}
	xs, is, ok := strings.Cut(rest, ".")
	if !ok {
		return Position{}, errBadCursor
	}
	xid, err1 := strconv.ParseInt(xs, 10, 64)
	id, err2 := strconv.ParseInt(is, 10, 64)
	if err1 != nil || err2 != nil || xid < 0 || id < 0 {
		return Position{}, errBadCursor
	}
	return Position{Xid: xid, ID: id}, nil
}

// LegacyCursor is p in the first cursor form, which Parse still accepts
// (tests of the transition use it; userd no longer makes it).
func LegacyCursor(p Position) string {
	return base64.RawURLEncoding.EncodeToString([]byte(legacyPrefix +
		strconv.FormatInt(p.Xid, 10) + "." + strconv.FormatInt(p.ID, 10)))
}
