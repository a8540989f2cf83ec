package auth

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func newVerifier(t testing.TB) (*SessionVerifier, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	v, err := NewSessionVerifier(context.Background(), SessionConfig{
		PEMKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
		Issuer: "https://clerk.example", Leeway: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return v, key
}

func sign(t testing.TB, key *rsa.PrivateKey, exp time.Time) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"iss": "https://clerk.example", "sub": "user_1", "exp": exp.Unix(), "nbf": time.Now().Add(-time.Second).Unix(),
	}).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCachedTokensStillExpire: a token verified once is not trusted past
// its exp (plus leeway), cached or not.
func TestCachedTokensStillExpire(t *testing.T) {
	t.Parallel()
	v, key := newVerifier(t)
	tok := sign(t, key, time.Now().Add(30*time.Second))
	if _, err := v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("cached token refused: %v", err)
	}
	v.now = func() time.Time { return time.Now().Add(36 * time.Second) }
	if _, err := v.Verify(tok); err == nil {
		t.Error("an expired token was accepted from the cache")
	}
	// A tampered copy of a cached token is another key: fully verified.
	if _, err := v.Verify(tok + "x"); err == nil {
		t.Error("a tampered token was accepted")
	}
}

// BenchmarkVerifySessionToken measures RS256 verification of a fresh token
// and of a token seen before (the cache).
func BenchmarkVerifySessionToken(b *testing.B) {
	v, key := newVerifier(b)
	b.Run("Fresh", func(b *testing.B) {
		toks := make([]string, 64)
		for i := range toks {
			toks[i] = sign(b, key, time.Now().Add(time.Hour+time.Duration(i)*time.Second))
		}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			clear(v.verified)
			if _, err := v.Verify(toks[i%len(toks)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Cached", func(b *testing.B) {
		tok := sign(b, key, time.Now().Add(time.Hour))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := v.Verify(tok); err != nil {
				b.Fatal(err)
			}
		}
	})
}
