package clerkhook_test

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
)

// FuzzDelivery posts arbitrary, correctly signed bodies to a real userd:
// whatever Clerk (or a holder of the secret) sends, the answer is 200 or
// 400 — never a 5xx that Svix would retry for a day — and userd stays up.
// The seed corpus (testdata/fuzz/FuzzDelivery plus the f.Add calls) runs
// in every `go test`; `go test -fuzz FuzzDelivery ./internal/clerkhook`
// explores further.
func FuzzDelivery(f *testing.F) {
	for _, typ := range []string{"user.created", "user.updated", "user.deleted"} {
		f.Add(clerkhook.SampleEvent(typ, clerkhook.SampleUser{
			ID: "user_fuzz", Email: "fuzz@example.com", FirstName: "F", UpdatedAt: time.UnixMilli(1718003521205),
		}))
	}
	f.Add([]byte(`{"type":"user.created","object":"event","data":{"id":"user_nul","first_name":"a\u0000b","updated_at":1}}`))
	f.Add([]byte(`{"type":"user.updated","object":"event","data":{"id":"user_neg","updated_at":-5}}`))
	f.Add([]byte(`{"type":"user.updated","object":"event","data":{"id":"user_big","updated_at":9223372036854775807,` +
		`"primary_email_address_id":"e","email_addresses":[{"id":"e","email_address":"` + string(make([]byte, 400)) + `"}]}}`))
	f.Add([]byte(`{"type":"user.deleted","object":"event","data":{"id":"user_del","deleted":true}}`))
	f.Add([]byte(`{"type":"email.created","object":"event","data":null}`))
	f.Add([]byte(`null`))

	in := apptest.Start(f, nil)
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, body []byte) {
		d := delivery{msgID: fmt.Sprintf("msg_fuzz_%d_%d", time.Now().UnixNano(), n.Add(1)), body: body,
			secret: apptest.WebhookSecret, sentAt: time.Now()}
		code, out := send(t, d.request(t, in.WebhookURL))
		if code != http.StatusOK && code != http.StatusBadRequest && code != http.StatusRequestEntityTooLarge {
			t.Errorf("body %q: answered %d %v", body, code, out)
		}
	})
}
