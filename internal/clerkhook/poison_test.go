package clerkhook_test

import (
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
)

// TestPoisonedDeliveriesFailAlone (issue 18, item 5): signed deliveries
// whose stored text PostgreSQL cannot hold (a NUL byte, invalid UTF-8) are
// answered 400 each, alone; the deliveries batched with them are applied.
// Before, one such delivery made PostgreSQL refuse the batch's statement
// and every batch-mate got 500.
func TestPoisonedDeliveriesFailAlone(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	user := func(i int) clerkhook.SampleUser {
		return clerkhook.SampleUser{ID: fmt.Sprintf("user_poison%d", i), Email: fmt.Sprintf("poison%d@example.com", i),
			FirstName: "Pat", LastName: "Doe", ImageURL: "https://img.example.com/p.png", UpdatedAt: at(1)}
	}
	poisoned := []struct {
		name string
		d    func(i int) delivery
	}{
		{"NULInSessionType", func(i int) delivery {
			return newSessionDelivery(fmt.Sprintf("msg_poison_%d", i), "session.created\x00x", user(i))
		}},
		{"NULOnlyInSessionType", func(i int) delivery {
			return newSessionDelivery(fmt.Sprintf("msg_poison_%d", i), "session.\x00", user(i))
		}},
		{"SvixIDInvalidUTF8", func(i int) delivery { return newDelivery(fmt.Sprintf("msg_\xff\xfe_%d", i), "user.created", user(i)) }},
		{"SvixIDLoneContinuationByte", func(i int) delivery { return newDelivery(fmt.Sprintf("msg_%d_\x80", i), "user.created", user(i)) }},
		{"NULInEmail", func(i int) delivery {
			u := user(i)
			u.Email = fmt.Sprintf("poison%d\x00@example.com", i)
			return newDelivery(fmt.Sprintf("msg_poison_%d", i), "user.created", u)
		}},
		{"NULInFirstName", func(i int) delivery {
			u := user(i)
			u.FirstName = "P\x00t"
			return newDelivery(fmt.Sprintf("msg_poison_%d", i), "user.updated", u)
		}},
		{"NULInLastName", func(i int) delivery {
			u := user(i)
			u.LastName = "\x00"
			return newSessionDelivery(fmt.Sprintf("msg_poison_%d", i), "session.created", u)
		}},
		{"NULInImageURL", func(i int) delivery {
			u := user(i)
			u.ImageURL = "https://img.example.com/\x00.png"
			return newDelivery(fmt.Sprintf("msg_poison_%d", i), "user.created", u)
		}},
	}
	const good = 40
	type result struct {
		name   string
		id     string
		poison bool
		code   int
		out    map[string]string
	}
	var reqs []result
	var ds []delivery
	for i := range good {
		ds = append(ds, newDelivery(fmt.Sprintf("msg_good_%d", i), "user.created", user(i)))
		reqs = append(reqs, result{name: "good", id: user(i).ID})
	}
	for j, p := range poisoned {
		i := 1000 + j
		ds = append(ds, p.d(i))
		reqs = append(reqs, result{name: p.name, id: user(i).ID, poison: true})
	}
	// All at once, so that the poisoned ones share batches with good ones.
	start := make(chan struct{})
	var wg sync.WaitGroup
	for k := range ds {
		req := ds[k].request(t, in.WebhookURL)
		wg.Go(func() {
			<-start
			reqs[k].code, reqs[k].out = send(t, req)
		})
	}
	close(start)
	wg.Wait()
	for _, r := range reqs {
		switch {
		case r.poison && (r.code != http.StatusBadRequest || r.out["error"] != "invalid_event"):
			t.Errorf("%s: %d %v, want 400 invalid_event", r.name, r.code, r.out)
		case !r.poison && r.code != http.StatusOK:
			t.Errorf("%s: a good delivery batched with poisoned ones got %d %v", r.id, r.code, r.out)
		}
		_, err := getUser(t, in, r.id)
		if r.poison != (err != nil) {
			t.Errorf("%s (%s): stored %v (err %v)", r.name, r.id, !r.poison, err)
		}
	}
	// Poisoned deliveries stay refused on redelivery: 400, never 500.
	for j, p := range poisoned {
		if code, out := post(t, in, p.d(1000+j)); code != http.StatusBadRequest {
			t.Errorf("%s redelivered: %d %v", p.name, code, out)
		}
	}
}
