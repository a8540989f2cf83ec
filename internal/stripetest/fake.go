// Package stripetest is a stateful fake of the few Stripe API endpoints
// whose state matters to userd — customers, subscriptions, Checkout
// Session line items — speaking Stripe's wire format (form-encoded
// requests, the pinned API version's JSON objects and list envelopes), plus
// builders of event payloads in the same shapes and signing with stripe-go's
// own test helper. stripe-mock (stateless) checks request shapes; this fake
// lets tests change a subscription and see the API answer with the change.
package stripetest

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v82"
	"github.com/stripe/stripe-go/v82/webhook"
)

// Item is one price of a subscription.
type Item struct {
	PriceID   string
	Quantity  int64
	PeriodEnd time.Time
}

// Sub is a subscription's state.
type Sub struct {
	ID, Customer, Status string
	Items                []Item
	Metadata             map[string]string
	Created              int64
}

// Customer is a customer's state.
type Customer struct {
	ID, Email string
	Metadata  map[string]string
	Deleted   bool
}

// Fake is the fake Stripe API.
type Fake struct {
	Server *httptest.Server

	mu        sync.Mutex
	customers map[string]*Customer
	subs      map[string]*Sub
	lines     map[string][]Item // checkout session id → line items
	events    []map[string]any  // in the order put (Stripe lists newest first)
	idem      map[string]string // idempotency key → customer id
	seq       int
	// Requests counts API requests; BadRequests those refused for their
	// shape (missing key or API version).
	Requests, BadRequests atomic.Int64
	// Hanging counts requests held by Hang now.
	Hanging atomic.Int64

	hangMu sync.Mutex
	hang   map[string]chan struct{} // path → closed on release
}

// Hang makes every request to path (e.g. "/v1/subscriptions") wait, as a
// Stripe that stopped answering, until the returned release is called (or
// the request is canceled; at the test's end at the latest).
func (f *Fake) Hang(path string) (release func()) {
	ch := make(chan struct{})
	f.hangMu.Lock()
	if f.hang == nil {
		f.hang = map[string]chan struct{}{}
	}
	f.hang[path] = ch
	f.hangMu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			f.hangMu.Lock()
			delete(f.hang, path)
			f.hangMu.Unlock()
			close(ch)
		})
	}
	return release
}

func (f *Fake) hold(r *http.Request) {
	f.hangMu.Lock()
	ch := f.hang[r.URL.Path]
	f.hangMu.Unlock()
	if ch == nil {
		return
	}
	f.Hanging.Add(1)
	defer f.Hanging.Add(-1)
	select {
	case <-ch:
	case <-r.Context().Done():
	}
}

// New starts a fake on a loopback port (closed at the test's end).
func New(t testing.TB) *Fake {
	f := &Fake{customers: map[string]*Customer{}, subs: map[string]*Sub{}, lines: map[string][]Item{}, idem: map[string]string{}}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Server.Close)
	return f
}

// NextID returns a new id with a prefix ("cus", "sub", "in", "evt", ...).
func (f *Fake) NextID(prefix string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	return fmt.Sprintf("%s_F%06d", prefix, f.seq)
}

// PutCustomer creates or replaces a customer.
func (f *Fake) PutCustomer(c Customer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.customers[c.ID] = &c
}

// PutSub creates or replaces a subscription (the state the API answers
// with from now on).
func (f *Fake) PutSub(s Sub) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.Items = slices.Clone(s.Items)
	f.subs[s.ID] = &s
}

// Sub returns a subscription's state.
func (f *Fake) Sub(id string) Sub {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := *f.subs[id]
	s.Items = slices.Clone(s.Items)
	return s
}

// PutEvent stores an event (EventJSON's payload) for GET /v1/events:
// Stripe keeps every event 30 days, whether or not a webhook delivered it.
func (f *Fake) PutEvent(payload []byte) {
	var e map[string]any
	if err := json.Unmarshal(payload, &e); err != nil {
		panic(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, e)
}

// PutCheckoutLines sets the line items of a Checkout Session.
func (f *Fake) PutCheckoutLines(sessionID string, items []Item) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines[sessionID] = slices.Clone(items)
}

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	f.Requests.Add(1)
	f.hold(r)
	if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer sk_test_") || r.Header.Get("Stripe-Version") != stripe.APIVersion {
		f.BadRequests.Add(1)
		writeErr(w, http.StatusUnauthorized, "invalid_request_error", "", "missing key or wrong Stripe-Version")
		return
	}
	if err := r.ParseForm(); err != nil {
		writeErr(w, http.StatusBadRequest, "invalid_request_error", "", "bad form")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	parts := strings.Split(path, "/")
	switch {
	case r.Method == http.MethodPost && path == "customers":
		f.createCustomer(w, r)
	case r.Method == http.MethodGet && path == "customers":
		var all []any
		for _, id := range slices.Sorted(maps.Keys(f.customers)) {
			if c := f.customers[id]; !c.Deleted {
				all = append(all, customerJSON(c))
			}
		}
		writeList(w, r, "/v1/customers", all)
	case r.Method == http.MethodGet && len(parts) == 2 && parts[0] == "customers":
		c, ok := f.customers[parts[1]]
		if !ok {
			writeErr(w, http.StatusNotFound, "invalid_request_error", "resource_missing", "No such customer: "+parts[1])
			return
		}
		writeJSON(w, customerJSON(c))
	case r.Method == http.MethodGet && path == "subscriptions":
		status := r.Form.Get("status")
		var all []any
		for _, id := range slices.Sorted(maps.Keys(f.subs)) {
			s := f.subs[id]
			if cu := r.Form.Get("customer"); cu != "" && s.Customer != cu {
				continue
			}
			// Stripe's default leaves canceled subscriptions out.
			if status == "" && s.Status == "canceled" || status != "" && status != "all" && status != s.Status {
				continue
			}
			all = append(all, SubJSON(*s))
		}
		writeList(w, r, "/v1/subscriptions", all)
	case r.Method == http.MethodGet && path == "events":
		f.listEvents(w, r)
	case r.Method == http.MethodGet && len(parts) == 4 && parts[0] == "checkout" && parts[1] == "sessions" && parts[3] == "line_items":
		items, ok := f.lines[parts[2]]
		if !ok {
			writeErr(w, http.StatusNotFound, "invalid_request_error", "resource_missing", "No such checkout.session: "+parts[2])
			return
		}
		var all []any
		for i, it := range items {
			all = append(all, map[string]any{
				"id": fmt.Sprintf("li_%s_%d", parts[2], i), "object": "item", "quantity": it.Quantity,
				"price": map[string]any{"id": it.PriceID, "object": "price"},
			})
		}
		writeList(w, r, r.URL.Path, all)
	default:
		writeErr(w, http.StatusNotFound, "invalid_request_error", "", "unrecognized request URL")
	}
}

// listEvents answers GET /v1/events as Stripe does: newest first (ties:
// the later put first), filtered by types[] and created[gte].
func (f *Fake) listEvents(w http.ResponseWriter, r *http.Request) {
	types := map[string]bool{}
	for k, v := range r.Form {
		if k == "types" || strings.HasPrefix(k, "types[") {
			for _, t := range v {
				types[t] = true
			}
		}
	}
	gte := int64(0)
	if v := r.Form.Get("created[gte]"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			writeErr(w, http.StatusBadRequest, "invalid_request_error", "", "created[gte] is not an integer")
			return
		}
		gte = n
	}
	var all []any
	for i := len(f.events) - 1; i >= 0; i-- {
		e := f.events[i]
		created, _ := e["created"].(float64)
		if len(types) > 0 && !types[e["type"].(string)] || int64(created) < gte {
			continue
		}
		all = append(all, e)
	}
	slices.SortStableFunc(all, func(a, b any) int {
		ca, cb := a.(map[string]any)["created"].(float64), b.(map[string]any)["created"].(float64)
		return int(cb - ca)
	})
	writeList(w, r, "/v1/events", all)
}

func (f *Fake) createCustomer(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	if id, ok := f.idem[key]; ok && key != "" {
		writeJSON(w, customerJSON(f.customers[id]))
		return
	}
	f.seq++
	c := &Customer{ID: fmt.Sprintf("cus_F%06d", f.seq), Email: r.Form.Get("email"), Metadata: map[string]string{}}
	for k, v := range r.Form {
		if name, ok := strings.CutPrefix(k, "metadata["); ok {
			c.Metadata[strings.TrimSuffix(name, "]")] = v[0]
		}
	}
	f.customers[c.ID] = c
	if key != "" {
		f.idem[key] = c.ID
	}
	writeJSON(w, customerJSON(c))
}

func customerJSON(c *Customer) map[string]any {
	if c.Deleted {
		return map[string]any{"id": c.ID, "object": "customer", "deleted": true}
	}
	return map[string]any{"id": c.ID, "object": "customer", "email": c.Email, "metadata": c.Metadata, "livemode": false}
}

// SubJSON is a subscription in the pinned API version's shape (periods on
// the items).
func SubJSON(s Sub) map[string]any {
	var items []any
	for i, it := range s.Items {
		items = append(items, map[string]any{
			"id": fmt.Sprintf("si_%s_%d", s.ID, i), "object": "subscription_item", "quantity": it.Quantity,
			"price":                map[string]any{"id": it.PriceID, "object": "price"},
			"current_period_start": it.PeriodEnd.AddDate(0, -1, 0).Unix(), "current_period_end": it.PeriodEnd.Unix(),
			"subscription": s.ID,
		})
	}
	meta := s.Metadata
	if meta == nil {
		meta = map[string]string{}
	}
	return map[string]any{
		"id": s.ID, "object": "subscription", "customer": s.Customer, "status": s.Status, "created": s.Created,
		"metadata": meta, "cancel_at_period_end": false, "livemode": false,
		"items": map[string]any{"object": "list", "data": items, "has_more": false, "url": "/v1/subscription_items?subscription=" + s.ID},
	}
}

// InvoiceJSON is a paid subscription invoice in the pinned API version's
// shape: the subscription under parent.subscription_details, one line per
// item with its period and price under pricing.price_details.
func InvoiceJSON(id string, s Sub, billingReason string, proration bool) map[string]any {
	lines := make([]Line, len(s.Items))
	for i, it := range s.Items {
		lines[i] = Line{Item: it, Proration: proration, Amount: 1000}
	}
	return InvoiceLinesJSON(id, s, billingReason, lines)
}

// Line is one line of an invoice: a price for a period, with its signed
// amount (a proration crediting unused time is negative).
type Line struct {
	Item
	Proration bool
	Amount    int64
}

// InvoiceLinesJSON is a paid invoice of subscription s with the given
// lines (a mid-period change's invoice: its proration lines).
func InvoiceLinesJSON(id string, s Sub, billingReason string, lines []Line) map[string]any {
	var data []any
	for i, l := range lines {
		data = append(data, map[string]any{
			"id": fmt.Sprintf("il_%s_%d", id, i), "object": "line_item", "invoice": id, "quantity": l.Quantity,
			"amount":  l.Amount,
			"period":  map[string]any{"start": l.PeriodEnd.AddDate(0, -1, 0).Unix(), "end": l.PeriodEnd.Unix()},
			"pricing": map[string]any{"type": "price_details", "price_details": map[string]any{"price": l.PriceID, "product": "prod_x"}},
			"parent": map[string]any{"type": "subscription_item_details", "subscription_item_details": map[string]any{
				"subscription": s.ID, "subscription_item": fmt.Sprintf("si_%s_%d", s.ID, i), "proration": l.Proration,
			}},
		})
	}
	return map[string]any{
		"id": id, "object": "invoice", "customer": s.Customer, "status": "paid", "billing_reason": billingReason,
		"parent": map[string]any{"type": "subscription_details", "subscription_details": map[string]any{
			"subscription": s.ID, "metadata": map[string]string{},
		}},
		"lines": map[string]any{"object": "list", "data": data, "has_more": false, "url": "/v1/invoices/" + id + "/lines"},
	}
}

// EventJSON wraps an object into an event of the pinned API version.
func EventJSON(id, typ string, created int64, object map[string]any) []byte {
	b, err := json.Marshal(map[string]any{
		"id": id, "object": "event", "type": typ, "created": created, "api_version": stripe.APIVersion,
		"livemode": false, "pending_webhooks": 1, "data": map[string]any{"object": object},
	})
	if err != nil {
		panic(err)
	}
	return b
}

// Sign returns the Stripe-Signature header of payload, made by stripe-go.
func Sign(payload []byte, secret string, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: at}).Header
}

func writeList(w http.ResponseWriter, r *http.Request, url string, all []any) {
	limit, _ := strconv.Atoi(r.Form.Get("limit"))
	if limit <= 0 || limit > 100 {
		limit = 10
	}
	start := 0
	if after := r.Form.Get("starting_after"); after != "" {
		for i, o := range all {
			if o.(map[string]any)["id"] == after {
				start = i + 1
			}
		}
	}
	end := min(start+limit, len(all))
	page := all[start:end]
	if page == nil {
		page = []any{}
	}
	writeJSON(w, map[string]any{"object": "list", "data": page, "has_more": end < len(all), "url": url})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Request-Id", "req_fake")
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, typ, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"type": typ, "code": code, "message": msg}})
}
