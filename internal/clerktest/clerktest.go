// Package clerktest fakes Clerk's remote APIs for tests — the only things
// userd's tests fake: a JWKS endpoint and the Backend API's GET
// /v1/users/{id}, speaking Clerk's wire format, plus RS256 session tokens
// signed with keys made in the test.
package clerktest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/userd/userd/internal/clerkhook"
)

// SecretKey is the Backend API key the fake accepts.
const SecretKey = "sk_test_clerktest_secret"

// Party is the azp of tokens minted by Token unless overridden.
const Party = "https://app.example.com"

// Clerk is a fake Clerk instance.
type Clerk struct {
	t      testing.TB
	server *httptest.Server

	mu    sync.Mutex
	keys  map[string]*rsa.PrivateKey // published in the JWKS
	users map[string][]byte          // Backend API user JSON by id

	// JWKSHits and APIHits count requests to each endpoint.
	JWKSHits atomic.Int64
	APIHits  atomic.Int64
}

// New starts a fake Clerk with one signing key, "kid-1".
func New(t testing.TB) *Clerk {
	t.Helper()
	c := &Clerk{t: t, keys: map[string]*rsa.PrivateKey{}, users: map[string][]byte{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/jwks.json", c.serveJWKS)
	mux.HandleFunc("GET /v1/users/{id}", c.serveUser)
	c.server = httptest.NewServer(mux)
	t.Cleanup(c.server.Close)
	c.AddKey("kid-1")
	return c
}

// Issuer is the iss of minted tokens (the fake's Frontend API URL).
func (c *Clerk) Issuer() string { return c.server.URL }

// JWKSURL is the fake's JWKS.
func (c *Clerk) JWKSURL() string { return c.server.URL + "/.well-known/jwks.json" }

// APIURL is the fake Backend API's base URL.
func (c *Clerk) APIURL() string { return c.server.URL }

// AddKey creates a signing key and publishes it under kid.
func (c *Clerk) AddKey(kid string) *rsa.PrivateKey {
	key := NewKey(c.t)
	c.mu.Lock()
	c.keys[kid] = key
	c.mu.Unlock()
	return key
}

// Key returns the private key published under kid.
func (c *Clerk) Key(kid string) *rsa.PrivateKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keys[kid]
}

// PublicKeyPEM is kid's public key as CLERK_JWT_KEY expects it.
func (c *Clerk) PublicKeyPEM(kid string) string {
	der, err := x509.MarshalPKIXPublicKey(&c.Key(kid).PublicKey)
	if err != nil {
		c.t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// NewKey makes an RSA key for signing tokens.
func NewKey(t testing.TB) *rsa.PrivateKey {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// SetUser makes the Backend API know a user, shaped as Clerk sends it.
func (c *Clerk) SetUser(u clerkhook.SampleUser) {
	var event struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(clerkhook.SampleEvent("user.updated", u), &event); err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.users[u.ID] = event.Data
	c.mu.Unlock()
}

// Claims returns the claims of a valid session token for sub.
func (c *Clerk) Claims(sub string) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"iss": c.Issuer(), "sub": sub, "azp": Party, "sid": "sess_" + sub,
		"iat": now.Unix(), "nbf": now.Add(-5 * time.Second).Unix(), "exp": now.Add(time.Minute).Unix(),
	}
}

// Token signs claims with kid's key (RS256).
func (c *Clerk) Token(claims jwt.MapClaims, kid string) string {
	return Sign(c.t, claims, kid, c.Key(kid))
}

// UserToken is a valid session token for sub.
func (c *Clerk) UserToken(sub string) string { return c.Token(c.Claims(sub), "kid-1") }

// Sign signs claims with key under kid (RS256).
func Sign(t testing.TB, claims jwt.MapClaims, kid string, key *rsa.PrivateKey) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (c *Clerk) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	c.JWKSHits.Add(1)
	c.mu.Lock()
	keys := []map[string]string{}
	for kid, k := range c.keys {
		keys = append(keys, map[string]string{
			"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256",
			"n": base64.RawURLEncoding.EncodeToString(k.N.Bytes()),
			"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes()),
		})
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
}

func (c *Clerk) serveUser(w http.ResponseWriter, r *http.Request) {
	c.APIHits.Add(1)
	w.Header().Set("Content-Type", "application/json")
	if !strings.EqualFold(r.Header.Get("Authorization"), "Bearer "+SecretKey) {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"errors":[{"message":"Unauthorized","code":"authentication_invalid"}]}`))
		return
	}
	c.mu.Lock()
	body, ok := c.users[r.PathValue("id")]
	c.mu.Unlock()
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errors":[{"message":"not found","code":"resource_not_found"}]}`))
		return
	}
	_, _ = w.Write(body)
}
