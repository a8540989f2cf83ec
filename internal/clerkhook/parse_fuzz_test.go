package clerkhook

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseEvent: parsing never panics, and what it accepts is shaped as
// the handler expects.
func FuzzParseEvent(f *testing.F) {
	f.Add([]byte(`{"type":"user.created","object":"event","data":{"id":"user_1","updated_at":1,` +
		`"primary_email_address_id":"idn_2","email_addresses":[{"id":"idn_1","email_address":"a@x.io"},{"id":"idn_2","email_address":"b@x.io"}]}}`))
	f.Add([]byte(`{"type":"user.deleted","object":"event","data":{"id":"user_1","deleted":true}}`))
	f.Add([]byte(`{"type":"session.created","object":"event","data":{}}`))
	f.Add([]byte(`{"type":"session.ended","object":"event","data":{"id":"sess_1","user_id":"user_1","user":{"id":"user_1","updated_at":3}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := parseEvent(body)
		if err != nil {
			if ev.Type != "" || ev.User != nil {
				t.Errorf("error %v with a non-empty event %+v", err, ev)
			}
			return
		}
		if ev.Type == "" {
			t.Error("accepted an event without a type")
		}
		isUser := ev.Type == typeUserCreated || ev.Type == typeUserUpdated
		mayEmbed := strings.HasPrefix(ev.Type, sessionTypePrefix)
		if (isUser && ev.User == nil) || (!isUser && !mayEmbed && ev.User != nil) {
			t.Errorf("type %q with user %v", ev.Type, ev.User)
		}
		if ev.User != nil && ev.User.Email != "" && !utf8.ValidString(ev.User.Email) && !strings.ContainsRune(ev.User.Email, utf8.RuneError) {
			t.Errorf("email %q is not valid UTF-8", ev.User.Email)
		}
	})
}

func TestPrimaryEmailIsFoundByID(t *testing.T) {
	t.Parallel()
	ev, err := parseEvent([]byte(`{"type":"user.updated","object":"event","data":{"id":"user_1","updated_at":5,` +
		`"primary_email_address_id":"idn_2","email_addresses":[{"id":"idn_1","email_address":"first@x.io"},{"id":"idn_2","email_address":"primary@x.io"}],` +
		`"first_name":null,"last_name":"L","image_url":"https://img/x"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if ev.User.Email != "primary@x.io" || ev.User.FirstName != "" || ev.User.LastName != "L" || ev.User.UpdatedAt != 5 {
		t.Errorf("parsed %+v", ev.User)
	}
	// A primary id that matches no address leaves the user without email.
	ev, err = parseEvent([]byte(`{"type":"user.updated","object":"event","data":{"id":"user_1","updated_at":5,` +
		`"primary_email_address_id":"idn_9","email_addresses":[{"id":"idn_1","email_address":"first@x.io"}]}}`))
	if err != nil || ev.User.Email != "" {
		t.Errorf("dangling primary id: %+v, %v", ev.User, err)
	}
}
