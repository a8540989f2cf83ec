package users

import (
	"net/mail"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/userd/userd/internal/apperr"
)

// Limits on request fields.
const (
	MaxAmount          = 1_000_000_000_000
	MaxIdempotencyKey  = 255
	MaxReason          = 512
	MaxName            = 256
	MaxEmail           = 320
	MaxImageURL        = 2048
	MaxClerkUserID     = 64
	DefaultPageSize    = 50
	MaxPageSize        = 500
	clerkUserIDPrefix  = "user_"
	invalidCharsReason = "must be valid UTF-8 without control characters"
)

// violations collects field violations in request order.
type violations []apperr.FieldViolation

func (v *violations) add(field, desc string) {
	*v = append(*v, apperr.FieldViolation{Field: field, Description: desc})
}

// err returns nil when nothing was added.
func (v violations) err() error {
	if len(v) == 0 {
		return nil
	}
	return apperr.InvalidArgument(v...)
}

// CheckClerkUserID returns an invalid-argument error naming field unless
// id looks like a Clerk user id.
func CheckClerkUserID(field, id string) error {
	var v violations
	v.clerkUserID(field, id)
	return v.err()
}

func (v *violations) clerkUserID(field, id string) {
	v.clerkID(field, id, clerkUserIDPrefix, `must be a Clerk user id ("user_...")`)
}

// clerkOrgID checks a Clerk organization id ("org_...").
func (v *violations) clerkOrgID(field, id string) {
	v.clerkID(field, id, "org_", `must be a Clerk organization id ("org_...")`)
}

func (v *violations) clerkID(field, id, prefix, what string) {
	switch {
	case id == "":
		v.add(field, "is required")
	case len(id) > MaxClerkUserID:
		v.add(field, "must be at most 64 characters")
	case !strings.HasPrefix(id, prefix) || len(id) == len(prefix):
		v.add(field, what)
	default:
		for _, r := range id {
			if !(r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				v.add(field, "must contain only letters, digits and underscores")
				return
			}
		}
	}
}

// email checks an optional email; "" is allowed when !required.
func (v *violations) email(field, email string, required bool) {
	if email == "" {
		if required {
			v.add(field, "is required")
		}
		return
	}
	if len(email) > MaxEmail {
		v.add(field, "must be at most 320 characters")
		return
	}
	addr, err := mail.ParseAddress(email)
	if err != nil || addr.Address != email || addr.Name != "" {
		v.add(field, "must be a plain email address like name@example.com")
	}
}

func (v *violations) text(field, s string, max int) {
	if len(s) > max {
		v.add(field, "must be at most "+strconv.Itoa(max)+" bytes")
		return
	}
	if !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) {
		v.add(field, invalidCharsReason)
	}
}

func (v *violations) imageURL(field, s string) {
	if s == "" {
		return
	}
	if len(s) > MaxImageURL {
		v.add(field, "must be at most 2048 bytes")
		return
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		v.add(field, "must be an absolute http(s) URL")
	}
}

func (v *violations) amount(field string, amount int64, allowZero bool) {
	switch {
	case amount == 0 && allowZero:
	case amount <= 0:
		if allowZero {
			v.add(field, "must not be negative")
		} else {
			v.add(field, "must be positive")
		}
	case amount > MaxAmount:
		v.add(field, "must be at most 1000000000000")
	}
}

func (v *violations) idempotencyKey(field, key string) {
	switch {
	case key == "":
		v.add(field, "is required")
	case len(key) > MaxIdempotencyKey:
		v.add(field, "must be at most 255 characters")
	default:
		for i := 0; i < len(key); i++ {
			if key[i] < 0x21 || key[i] > 0x7e {
				v.add(field, "must be printable ASCII without spaces")
				return
			}
		}
	}
}

// MaxAction is the longest action name of the price list.
const MaxAction = 64

// validAction reports whether a is an action name: a lowercase letter,
// then lowercase letters, digits, "_", "." or "-" (the database checks the
// same rule). Names are REST path segments, hence no ":" or "/".
func validAction(a string) bool {
	if a == "" || len(a) > MaxAction || a[0] < 'a' || a[0] > 'z' {
		return false
	}
	for i := 1; i < len(a); i++ {
		c := a[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

func (v *violations) action(field, a string) {
	switch {
	case a == "":
		v.add(field, "is required")
	case len(a) > MaxAction:
		v.add(field, "must be at most 64 characters")
	case !validAction(a):
		v.add(field, `must be a lowercase letter followed by lowercase letters, digits, "_", "." or "-"`)
	}
}

// pageSize checks a requested page size and returns the one to use (def
// for 0).
func (v *violations) pageSize(field string, size, def, max int32) int32 {
	switch {
	case size < 0 || size > max:
		v.add(field, "must be between 0 and "+strconv.Itoa(int(max)))
	case size == 0:
		return def
	}
	return size
}

func (v *violations) plan(field string, p Plan) {
	if !p.Valid() {
		v.add(field, "must be one of FREE, PRO, ENTERPRISE")
	}
}
