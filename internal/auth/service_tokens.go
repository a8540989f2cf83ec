package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"
)

// MinServiceTokenLength refuses guessable tokens.
const MinServiceTokenLength = 24

// ServiceTokens are the configured service tokens, kept only as SHA-256
// digests.
type ServiceTokens struct {
	entries []serviceToken
}

type serviceToken struct {
	name   string
	digest [sha256.Size]byte
}

// ParseServiceTokens reads USERD_SERVICE_TOKENS: comma-separated name=token
// pairs, where token is the token itself or "sha256:" and the hex SHA-256
// of it (so the configuration need not hold the secret). Errors name the
// entry by position and name, never by token.
func ParseServiceTokens(value string) (ServiceTokens, error) {
	var ts ServiceTokens
	seen := map[string]bool{}
	for i, entry := range strings.Split(value, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, token, ok := strings.Cut(entry, "=")
		name = strings.TrimSpace(name)
		if !ok || !validServiceName(name) {
			return ServiceTokens{}, fmt.Errorf("USERD_SERVICE_TOKENS entry #%d: want name=token with a name of letters, digits, '-', '_' or '.'", i+1)
		}
		if seen[name] {
			return ServiceTokens{}, fmt.Errorf("USERD_SERVICE_TOKENS: service %q is listed twice", name)
		}
		seen[name] = true
		st := serviceToken{name: name}
		if hexDigest, hashed := strings.CutPrefix(token, "sha256:"); hashed {
			b, err := hex.DecodeString(hexDigest)
			if err != nil || len(b) != sha256.Size {
				return ServiceTokens{}, fmt.Errorf("USERD_SERVICE_TOKENS %q: sha256: must be followed by 64 hex digits", name)
			}
			copy(st.digest[:], b)
		} else {
			if len(token) < MinServiceTokenLength {
				return ServiceTokens{}, fmt.Errorf("USERD_SERVICE_TOKENS %q: token must be at least %d characters (e.g. openssl rand -hex 32)", name, MinServiceTokenLength)
			}
			st.digest = sha256.Sum256([]byte(token))
		}
		ts.entries = append(ts.entries, st)
	}
	return ts, nil
}

func validServiceName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, r := range n {
		if !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// Len is the number of configured services.
func (ts ServiceTokens) Len() int { return len(ts.entries) }

// Match returns the name of the service whose token this is. It compares
// digests in constant time and always looks at every entry, so timing tells
// nothing about which (if any) matched.
func (ts ServiceTokens) Match(token string) (string, bool) {
	return ts.matchDigest(sha256.Sum256([]byte(token)))
}

// matchDigest is Match for the token's SHA-256 digest.
func (ts ServiceTokens) matchDigest(digest [sha256.Size]byte) (string, bool) {
	name := ""
	for _, e := range ts.entries {
		if subtle.ConstantTimeCompare(digest[:], e.digest[:]) == 1 {
			name = e.name
		}
	}
	return name, name != ""
}
