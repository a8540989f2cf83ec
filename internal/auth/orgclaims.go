package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ActiveOrganization is the organization a session token names as active:
// Clerk's v2 "o" claim or the v1 org_* claims, normalised to one form.
type ActiveOrganization struct {
	// ID is Clerk's organization id ("org_...").
	ID string
	// Slug is the organization's slug, or "".
	Slug string
	// Role is the member's role in the "org:<role>" form ("org:admin",
	// "org:member", custom "org:billing"), as v1 tokens and Clerk's Backend
	// API write it; v2 tokens drop the prefix, which is put back.
	Role string
	// Permissions are the member's custom permissions in the
	// "org:<feature>:<permission>" form (system permissions never appear in
	// tokens). Sorted as the token lists them.
	Permissions []string
}

// HasPermission reports whether the token grants perm.
func (o *ActiveOrganization) HasPermission(perm string) bool {
	if o == nil {
		return false
	}
	for _, p := range o.Permissions {
		if p == perm {
			return true
		}
	}
	return false
}

// Actor is the "act" claim of an impersonation token: the Clerk user (or
// dashboard operator) acting as the token's subject.
type Actor struct {
	Subject   string
	SessionID string
	Issuer    string
}

// errOrgClaims is a token whose organization claims are malformed; the
// token is refused: userd cannot tell which organization, role or
// permissions it means.
var errOrgClaims = errors.New("malformed organization claims")

// errActorClaim is a token whose act claim is malformed.
var errActorClaim = errors.New(`malformed "act" claim`)

// orgClaims are the raw claims of the active organization and the actor,
// decoded by normalize; raw so that a claim of the wrong type is refused
// with a clear reason rather than by the JSON decoder.
type orgClaims struct {
	O              json.RawMessage `json:"o,omitempty"`
	Features       json.RawMessage `json:"fea,omitempty"`
	OrgID          json.RawMessage `json:"org_id,omitempty"`
	OrgSlug        json.RawMessage `json:"org_slug,omitempty"`
	OrgRole        json.RawMessage `json:"org_role,omitempty"`
	OrgPermissions json.RawMessage `json:"org_permissions,omitempty"`
	Act            json.RawMessage `json:"act,omitempty"`
}

// present reports whether a raw claim was in the token (JSON null
// included: a claim sent as null is malformed, not absent).
func present(r json.RawMessage) bool { return len(r) > 0 }

// str decodes a claim that must be a JSON string.
func str(r json.RawMessage, name string) (string, error) {
	if !present(r) {
		return "", nil
	}
	if bytes.Equal(bytes.TrimSpace(r), []byte("null")) {
		return "", fmt.Errorf("%w: %s is null", errOrgClaims, name)
	}
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		return "", fmt.Errorf("%w: %s is not a string", errOrgClaims, name)
	}
	return s, nil
}

// orgRole normalises a role to the "org:<role>" form.
func orgRole(role string) string {
	if strings.HasPrefix(role, "org:") {
		return role
	}
	return "org:" + role
}

// checkOrgID refuses an organization id that is not Clerk's.
func checkOrgID(id, name string) error {
	if !strings.HasPrefix(id, "org_") || len(id) == len("org_") || len(id) > 255 {
		return fmt.Errorf(`%w: %s is not a Clerk organization id ("org_...")`, errOrgClaims, name)
	}
	return nil
}

// checkRole refuses an empty or garbled role.
func checkRole(role, name string) error {
	r := strings.TrimPrefix(role, "org:")
	if r == "" || len(role) > 255 || strings.ContainsAny(r, " ,\t\n") {
		return fmt.Errorf("%w: %s is empty or not a role", errOrgClaims, name)
	}
	return nil
}

// normalize reads the active organization and the actor from the raw
// claims. A token without organization claims has no active organization
// (nil); one whose organization claims are malformed (wrong types, an id
// that is not Clerk's, a role missing, v1 and v2 claims naming different
// organizations, a feature-permission map that does not fit the
// permissions) is refused with errOrgClaims.
func (c *orgClaims) normalize() (*ActiveOrganization, *Actor, error) {
	act, err := c.actor()
	if err != nil {
		return nil, nil, err
	}
	v2, err := c.v2()
	if err != nil {
		return nil, nil, err
	}
	v1, err := c.v1()
	if err != nil {
		return nil, nil, err
	}
	switch {
	case v2 != nil && v1 != nil:
		// Not something Clerk issues, but a template could add both:
		// they must agree on the organization; v2's role and permissions
		// win (Clerk's SDKs read v2 when "v" is 2).
		if v1.ID != v2.ID || v1.Role != v2.Role {
			return nil, nil, fmt.Errorf("%w: o and org_id/org_role name different organizations or roles", errOrgClaims)
		}
		return v2, act, nil
	case v2 != nil:
		return v2, act, nil
	}
	return v1, act, nil
}

func (c *orgClaims) actor() (*Actor, error) {
	if !present(c.Act) {
		return nil, nil
	}
	var a struct {
		Sub json.RawMessage `json:"sub"`
		Sid json.RawMessage `json:"sid"`
		Iss json.RawMessage `json:"iss"`
	}
	if err := json.Unmarshal(c.Act, &a); err != nil || bytes.Equal(bytes.TrimSpace(c.Act), []byte("null")) {
		return nil, fmt.Errorf("%w: not an object", errActorClaim)
	}
	var out Actor
	for _, f := range []struct {
		raw json.RawMessage
		dst *string
	}{{a.Sub, &out.Subject}, {a.Sid, &out.SessionID}, {a.Iss, &out.Issuer}} {
		s, err := str(f.raw, "act")
		if err != nil {
			return nil, fmt.Errorf("%w: its members must be strings", errActorClaim)
		}
		*f.dst = s
	}
	if out.Subject == "" {
		// Still an impersonation token: whoever acts is unknown, which
		// is no reason to trust it more.
		return nil, fmt.Errorf("%w: act.sub is missing", errActorClaim)
	}
	return &out, nil
}

// v2 reads Clerk's v2 "o" claim: {id, slg, rol, per, fpm}, where per
// lists permission names, fea the features ("o:credits" for an
// organization feature) and fpm, one number per feature of fea, the
// bitmask of which of per's permissions the member has in that feature
// (bit j set: per[j]). The permissions are expanded to
// "org:<feature>:<permission>", as Clerk's SDKs do.
func (c *orgClaims) v2() (*ActiveOrganization, error) {
	if !present(c.O) {
		return nil, nil
	}
	if bytes.Equal(bytes.TrimSpace(c.O), []byte("null")) {
		return nil, fmt.Errorf("%w: o is null", errOrgClaims)
	}
	var raw struct {
		ID   json.RawMessage `json:"id"`
		Slug json.RawMessage `json:"slg"`
		Role json.RawMessage `json:"rol"`
		Per  json.RawMessage `json:"per"`
		FPM  json.RawMessage `json:"fpm"`
	}
	if err := json.Unmarshal(c.O, &raw); err != nil {
		return nil, fmt.Errorf("%w: o is not an object", errOrgClaims)
	}
	id, err := str(raw.ID, "o.id")
	if err != nil {
		return nil, err
	}
	if err := checkOrgID(id, "o.id"); err != nil {
		return nil, err
	}
	slug, err := str(raw.Slug, "o.slg")
	if err != nil {
		return nil, err
	}
	role, err := str(raw.Role, "o.rol")
	if err != nil {
		return nil, err
	}
	if err := checkRole(role, "o.rol"); err != nil {
		return nil, err
	}
	per, err := str(raw.Per, "o.per")
	if err != nil {
		return nil, err
	}
	fpm, err := str(raw.FPM, "o.fpm")
	if err != nil {
		return nil, err
	}
	fea, err := str(c.Features, "fea")
	if err != nil {
		return nil, err
	}
	perms, err := expandPermissions(per, fpm, fea)
	if err != nil {
		return nil, err
	}
	return &ActiveOrganization{ID: id, Slug: slug, Role: orgRole(role), Permissions: perms}, nil
}

// splitList splits a comma list; "" is the empty list.
func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// expandPermissions maps v2's per, fpm and fea to permission keys.
func expandPermissions(per, fpm, fea string) ([]string, error) {
	names := splitList(per)
	masks := splitList(fpm)
	features := splitList(fea)
	for _, n := range names {
		if n == "" || strings.ContainsAny(n, ": ") {
			return nil, fmt.Errorf("%w: o.per is not a comma list of permission names", errOrgClaims)
		}
	}
	if len(masks) > len(features) {
		return nil, fmt.Errorf("%w: o.fpm has more entries than fea has features", errOrgClaims)
	}
	var out []string
	for i, m := range masks {
		mask, err := strconv.ParseUint(m, 10, 63)
		if err != nil {
			return nil, fmt.Errorf("%w: o.fpm is not a comma list of numbers", errOrgClaims)
		}
		if mask>>uint(len(names)) != 0 {
			return nil, fmt.Errorf("%w: o.fpm names permissions o.per does not list", errOrgClaims)
		}
		scope, feature, ok := strings.Cut(features[i], ":")
		if !ok || feature == "" {
			return nil, fmt.Errorf(`%w: fea is not a comma list of "<scope>:<feature>"`, errOrgClaims)
		}
		if !strings.Contains(scope, "o") {
			// A user feature ("u:..."): not the organization's.
			continue
		}
		for j, name := range names {
			if mask&(1<<uint(j)) != 0 {
				out = append(out, "org:"+feature+":"+name)
			}
		}
	}
	return out, nil
}

// v1 reads the v1 claims org_id, org_slug, org_role and org_permissions.
func (c *orgClaims) v1() (*ActiveOrganization, error) {
	id, err := str(c.OrgID, "org_id")
	if err != nil {
		return nil, err
	}
	slug, err := str(c.OrgSlug, "org_slug")
	if err != nil {
		return nil, err
	}
	role, err := str(c.OrgRole, "org_role")
	if err != nil {
		return nil, err
	}
	var perms []string
	if present(c.OrgPermissions) {
		if err := json.Unmarshal(c.OrgPermissions, &perms); err != nil || perms == nil {
			return nil, fmt.Errorf("%w: org_permissions is not a list of strings", errOrgClaims)
		}
		for _, p := range perms {
			if !strings.HasPrefix(p, "org:") {
				return nil, fmt.Errorf(`%w: org_permissions lists a permission not of the form "org:<feature>:<permission>"`, errOrgClaims)
			}
		}
	}
	if id == "" {
		if slug != "" || role != "" || len(perms) > 0 {
			return nil, fmt.Errorf("%w: org_slug, org_role or org_permissions without org_id", errOrgClaims)
		}
		return nil, nil
	}
	if err := checkOrgID(id, "org_id"); err != nil {
		return nil, err
	}
	if err := checkRole(role, "org_role"); err != nil {
		return nil, err
	}
	if len(perms) == 0 {
		perms = nil
	}
	return &ActiveOrganization{ID: id, Slug: slug, Role: orgRole(role), Permissions: perms}, nil
}
