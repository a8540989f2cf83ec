package clerkhook

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// SampleUser describes the user in a sample event.
type SampleUser struct {
	ID        string
	Email     string // "" for a user without email
	FirstName string
	LastName  string
	ImageURL  string
	UpdatedAt time.Time
}

// SampleEvent builds a Clerk webhook body of the given type, shaped like
// Clerk's (every documented field of the User object, email addresses with
// the primary one not first). It serves `userd send-clerk-event` and tests.
func SampleEvent(typ string, u SampleUser) []byte {
	var data any
	if typ == typeUserDeleted {
		data = map[string]any{"object": "user", "id": u.ID, "deleted": true, "external_id": nil}
	} else {
		data = sampleUserObject(u)
	}
	return sampleEnvelope(typ, u.UpdatedAt.UnixMilli(), data)
}

// SampleSessionEvent builds a session.* webhook body (session.created,
// session.ended, ...) for a session of user u, shaped like Clerk's: the
// Session object with the full User object embedded as "user" — or, with
// withUser false, without it.
func SampleSessionEvent(typ string, u SampleUser, withUser bool) []byte {
	ms := u.UpdatedAt.UnixMilli()
	data := map[string]any{
		"object": "session", "id": "sess_" + strings.TrimPrefix(u.ID, "user_"), "user_id": u.ID,
		"client_id": "client_sample", "actor": nil, "status": "active", "last_active_organization_id": nil,
		"last_active_at": ms, "expire_at": ms + 7*24*3600*1000, "abandon_at": ms + 30*24*3600*1000,
		"created_at": ms, "updated_at": ms,
	}
	if withUser {
		data["user"] = sampleUserObject(u)
	}
	return sampleEnvelope(typ, ms, data)
}

// sampleUserObject is u as Clerk's User object.
func sampleUserObject(u SampleUser) map[string]any {
	ms := u.UpdatedAt.UnixMilli()
	var primary any
	emails := []any{}
	if u.Email != "" {
		primaryID := "idn_primary_" + u.ID
		primary = primaryID
		// A secondary address first: the primary one is found by id.
		emails = append(emails,
			emailAddress("idn_secondary_"+u.ID, "secondary."+u.Email, ms),
			emailAddress(primaryID, u.Email, ms))
	}
	return map[string]any{
		"object": "user", "id": u.ID, "external_id": nil, "username": nil,
		"first_name": nullIfEmpty(u.FirstName), "last_name": nullIfEmpty(u.LastName),
		"locale": nil, "image_url": u.ImageURL, "profile_image_url": u.ImageURL, "has_image": u.ImageURL != "",
		"primary_email_address_id": primary, "primary_phone_number_id": nil, "primary_web3_wallet_id": nil,
		"email_addresses": emails, "phone_numbers": []any{}, "web3_wallets": []any{}, "passkeys": []any{},
		"external_accounts": []any{}, "saml_accounts": []any{}, "enterprise_accounts": []any{},
		"public_metadata": map[string]any{}, "private_metadata": nil, "unsafe_metadata": map[string]any{},
		"password_enabled": true, "two_factor_enabled": false, "totp_enabled": false, "backup_code_enabled": false,
		"mfa_enabled_at": nil, "mfa_disabled_at": nil, "password_last_updated_at": nil,
		"banned": false, "locked": false, "lockout_expires_in_seconds": nil, "verification_attempts_remaining": 100,
		"delete_self_enabled": true, "create_organization_enabled": true, "create_organizations_limit": nil,
		"last_sign_in_at": nil, "last_active_at": nil, "legal_accepted_at": nil,
		"created_at": ms, "updated_at": ms,
	}
}

func sampleEnvelope(typ string, ms int64, data any) []byte {
	body, err := json.Marshal(map[string]any{
		"type": typ, "object": "event", "timestamp": ms, "instance_id": "ins_userd_sample",
		"event_attributes": map[string]any{"http_request": map[string]any{"client_ip": "192.0.2.1", "user_agent": "userd"}},
		"data":             data,
	})
	if err != nil {
		panic(fmt.Sprintf("marshal sample event: %v", err)) // maps of plain values always marshal
	}
	return body
}

func emailAddress(id, addr string, ms int64) map[string]any {
	return map[string]any{
		"id": id, "object": "email_address", "email_address": addr, "reserved": false, "linked_to": []any{},
		"verification": map[string]any{"status": "verified", "strategy": "email_code", "attempts": 1, "expire_at": ms},
		"created_at":   ms, "updated_at": ms,
	}
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// SignHeaders returns the svix-id, svix-timestamp and svix-signature headers
// Svix would send for body, signed with secret at ts.
func SignHeaders(secret, msgID string, ts time.Time, body []byte) (http.Header, error) {
	wh, err := newVerifier(secret)
	if err != nil {
		return nil, err
	}
	sig, err := wh.Sign(msgID, ts, body)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	h := http.Header{}
	h.Set("svix-id", msgID)
	h.Set("svix-timestamp", strconv.FormatInt(ts.Unix(), 10))
	h.Set("svix-signature", sig)
	h.Set("Content-Type", "application/json")
	return h, nil
}
