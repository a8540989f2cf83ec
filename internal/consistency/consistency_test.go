package consistency

import (
	"encoding/base64"
	"errors"
	"math"
	"testing"
)

func TestTokenRoundTrip(t *testing.T) {
	for _, tok := range []Token{{LSN: 1}, {LSN: 0x16B3748}, {LSN: math.MaxUint64}, {Xid: 1}, {Xid: 748}, {Xid: math.MaxInt64}} {
		got, err := ParseToken(tok.String())
		if err != nil || got != tok {
			t.Errorf("ParseToken(%q) = %+v, %v; want %+v", tok.String(), got, err, tok)
		}
	}
	// Version 1 keeps its text: tokens handed out before stay valid.
	if s := (Token{LSN: 0x0102030405060708}).String(); s != "AQECAwQFBgcI" {
		t.Errorf("v1 text %q changed", s)
	}
}

func TestParseTokenRefusesOthers(t *testing.T) {
	raw := func(b ...byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	for _, s := range []string{
		"", "x", "AQECAwQFBgc", "AQECAwQFBgcII", "AQECAwQFBgc*",
		raw(1, 0, 0, 0, 0, 0, 0, 0, 0),    // v1 of position 0
		raw(2, 0, 0, 0, 0, 0, 0, 0, 0),    // v2 of xid 0
		raw(2, 0x80, 0, 0, 0, 0, 0, 0, 1), // v2 beyond an xid8 kept as bigint
		raw(3, 0, 0, 0, 0, 0, 0, 0, 1),    // unknown version
		raw(0, 0, 0, 0, 0, 0, 0, 0, 1),    // no version
		"AQECAwQFBg+I",                    // the standard alphabet
	} {
		if _, err := ParseToken(s); !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseToken(%q) = %v, want ErrBadToken", s, err)
		}
	}
}

func TestRecorderCacheToken(t *testing.T) {
	var r Recorder
	if _, ok, ran := r.CacheToken(); ok || ran {
		t.Fatal("an empty recorder has a token")
	}
	r.ObserveXid(7)
	r.ObserveXid(5)
	if tok, ok, ran := r.CacheToken(); !ok || ran || tok != (Token{Xid: 7}) {
		t.Errorf("CacheToken = %+v %v %v, want the largest xid", tok, ok, ran)
	}
	r.MarkRan()
	if _, _, ran := r.CacheToken(); !ran {
		t.Error("MarkRan not reported")
	}
}
