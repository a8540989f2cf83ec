package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/userd/userd/internal/auth"
)

// Role is what an operator may do in the console.
type Role string

// Roles. A viewer reads (with personal data masked); support also sees
// personal data and makes corrections.
const (
	RoleViewer  Role = "viewer"
	RoleSupport Role = "support"
)

// cookieName is the console's session cookie.
const cookieName = "userd_console"

// session is what the signed cookie carries.
type session struct {
	Operator string `json:"sub"`
	Role     Role   `json:"role"`
	Expires  int64  `json:"exp"`
}

// errNotOperator: a valid Clerk session that grants no console role.
var errNotOperator = errors.New("this Clerk user is not an operator")

// errImpersonation: an impersonation token (act claim) never signs in.
var errImpersonation = errors.New("impersonation sessions cannot sign in to the console")

// roleOf is the console role the verified claims grant: the userd_role
// claim, else membership of the operators' organization (its role
// org:admin or org:support: support; any other: viewer).
func roleOf(c *auth.SessionClaims, operatorsOrg string) (Role, error) {
	if c.Actor != nil {
		return "", errImpersonation
	}
	switch Role(c.OperatorRole) {
	case RoleViewer, RoleSupport:
		return Role(c.OperatorRole), nil
	case "":
	default:
		return "", errNotOperator
	}
	if operatorsOrg != "" && c.Organization != nil && c.Organization.ID == operatorsOrg {
		switch c.Organization.Role {
		case "org:admin", "org:support":
			return RoleSupport, nil
		}
		return RoleViewer, nil
	}
	return "", errNotOperator
}

// sessions signs and reads session cookies with an HMAC key.
type sessions struct {
	key []byte
	ttl time.Duration
	now func() time.Time
}

func newSessions(key string, ttl time.Duration, now func() time.Time) (*sessions, error) {
	k := []byte(key)
	if len(k) == 0 {
		k = make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return nil, err
		}
	}
	return &sessions{key: k, ttl: ttl, now: now}, nil
}

func (s *sessions) sign(payload string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// cookie returns the cookie of a new session.
func (s *sessions) cookie(operator string, role Role) (*http.Cookie, error) {
	exp := s.now().Add(s.ttl)
	b, err := json.Marshal(session{Operator: operator, Role: role, Expires: exp.Unix()})
	if err != nil {
		return nil, err
	}
	payload := base64.RawURLEncoding.EncodeToString(b)
	return &http.Cookie{
		Name: cookieName, Value: payload + "." + s.sign(payload), Path: "/",
		Expires: exp, MaxAge: int(s.ttl.Seconds()),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
	}, nil
}

// clear is the cookie that ends a session.
func clearCookie() *http.Cookie {
	return &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode}
}

// read returns the request's live session, if its cookie is one this
// console signed.
func (s *sessions) read(r *http.Request) (session, bool) {
	c, err := r.Cookie(cookieName)
	if err != nil {
		return session{}, false
	}
	payload, sig, ok := strings.Cut(c.Value, ".")
	if !ok || !hmac.Equal([]byte(sig), []byte(s.sign(payload))) {
		return session{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return session{}, false
	}
	var ss session
	if err := json.Unmarshal(b, &ss); err != nil {
		return session{}, false
	}
	if ss.Operator == "" || (ss.Role != RoleViewer && ss.Role != RoleSupport) || s.now().Unix() >= ss.Expires {
		return session{}, false
	}
	return ss, true
}
