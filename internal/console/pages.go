package console

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// Page sizes.
const (
	searchPageSize = 25
	ledgerPageSize = 50
	auditPageSize  = 50
	feedTailSize   = 20
	usageDays      = 14
)

// pageNames are the templates in templates/, each rendered inside
// layout.html.
var pageNames = []string{"signin", "error", "search", "account", "usage", "prices", "webhooks", "sync", "audit"}

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"whenp": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"signed": func(n int64) string {
		if n > 0 {
			return "+" + strconv.FormatInt(n, 10)
		}
		return strconv.FormatInt(n, 10)
	},
}

func parsePages() (map[string]*template.Template, error) {
	out := map[string]*template.Template{}
	for _, p := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", p, err)
		}
		out[p] = t
	}
	return out, nil
}

// view is what every page renders with.
type view struct {
	Title    string
	Operator string
	Role     Role
	Support  bool
	Data     any
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, page string, ss session, title string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	v := view{Title: title, Operator: ss.Operator, Role: ss.Role, Support: ss.Role == RoleSupport, Data: data}
	if err := s.pages[page].Execute(w, v); err != nil {
		s.log.Error("console render", "page", page, "err", err)
	}
}

func (s *Server) signinPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, "signin", session{}, "Sign in", nil)
}

// signin exchanges a Clerk session token (the form's token field, or the
// __session cookie Clerk sets on the application's domain) for a console
// session.
func (s *Server) signin(w http.ResponseWriter, r *http.Request) {
	tok := strings.TrimSpace(r.PostFormValue("token"))
	if tok == "" {
		if c, err := r.Cookie("__session"); err == nil {
			tok = c.Value
		}
	}
	if tok == "" {
		w.WriteHeader(http.StatusUnauthorized)
		s.render(w, r, "signin", session{}, "Sign in", map[string]string{"Error": "Paste a Clerk session token, or sign in to the application first."})
		return
	}
	claims, err := s.cfg.Verifier.Verify(tok)
	if err != nil {
		w.WriteHeader(http.StatusUnauthorized)
		s.render(w, r, "signin", session{}, "Sign in", map[string]string{"Error": "That session token is not valid (expired, or not from this Clerk instance). Get a fresh one and try again."})
		return
	}
	role, err := roleOf(claims, s.cfg.OperatorsOrg)
	if err != nil {
		w.WriteHeader(http.StatusForbidden)
		s.render(w, r, "signin", session{}, "Sign in", map[string]string{"Error": err.Error() + ". Ask an administrator for the viewer or support role."})
		return
	}
	c, err := s.sessions.cookie(claims.Subject, role)
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	s.log.Info("console sign-in", "operator", claims.Subject, "role", role)
	http.SetCookie(w, c)
	http.Redirect(w, r, "/search", http.StatusSeeOther)
}

func (s *Server) signout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, clearCookie())
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}

// shown is an account as a role may see it: a viewer gets the email
// masked and no names.
type shown struct {
	users.ConsoleAccount
	Name string
}

func show(a users.ConsoleAccount, role Role) shown {
	out := shown{ConsoleAccount: a, Name: strings.TrimSpace(a.FirstName + " " + a.LastName)}
	if role != RoleSupport {
		out.Email = maskEmail(a.Email)
		out.FirstName, out.LastName, out.ImageURL = "", "", ""
		if out.Name != "" {
			out.Name = "(hidden)"
		}
	}
	return out
}

// maskEmail keeps the first character of the local part and the domain:
// enough for a viewer to confirm a customer it was told the address of.
func maskEmail(e string) string {
	local, domain, ok := strings.Cut(e, "@")
	if !ok || local == "" {
		if e == "" {
			return ""
		}
		return "•••"
	}
	r := []rune(local)
	return string(r[0]) + "•••@" + domain
}

func (s *Server) search(w http.ResponseWriter, r *http.Request, ss session) {
	q := r.URL.Query().Get("q")
	data := map[string]any{"Q": q}
	if strings.TrimSpace(q) != "" {
		after, _ := uuid.Parse(r.URL.Query().Get("after"))
		as, err := s.reads.Search(r.Context(), q, after, searchPageSize+1)
		if err != nil {
			s.failErr(w, r, err)
			return
		}
		if len(as) > searchPageSize {
			as = as[:searchPageSize]
			data["Next"] = "/search?" + url.Values{"q": {q}, "after": {as[len(as)-1].ID.String()}}.Encode()
		}
		rows := make([]shown, len(as))
		for i, a := range as {
			rows[i] = show(a, ss.Role)
		}
		data["Results"] = rows
		data["Searched"] = true
	}
	s.render(w, r, "search", ss, "Search", data)
}

// loadAccount reads the account the path names, or answers the request
// with why it cannot.
func (s *Server) loadAccount(w http.ResponseWriter, r *http.Request) (users.ConsoleAccount, bool) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		s.failErr(w, r, apperr.NotFound("account not found"))
		return users.ConsoleAccount{}, false
	}
	a, err := s.reads.Account(r.Context(), id)
	if err != nil {
		s.failErr(w, r, err)
		return users.ConsoleAccount{}, false
	}
	return a, true
}

// newKey is a fresh idempotency key for a correction form.
func newKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "console-" + hex.EncodeToString(b)
}

// doneMessages are the outcomes a correction's redirect may name.
var doneMessages = map[string]string{
	users.AuditGrant:   "Credits granted.",
	users.AuditDeduct:  "Credits deducted.",
	users.AuditSetPlan: "Plan changed.",
	users.AuditClose:   "Account closed.",
}

func (s *Server) account(w http.ResponseWriter, r *http.Request, ss session) {
	ctx := r.Context()
	a, ok := s.loadAccount(w, r)
	if !ok {
		return
	}
	id := a.ID
	qv := r.URL.Query()
	f := users.LedgerFilter{Kind: users.TxKind(qv.Get("kind")), Member: strings.TrimSpace(qv.Get("member")), Limit: ledgerPageSize + 1}
	f.BeforeID, _ = strconv.ParseInt(qv.Get("before"), 10, 64)
	ledger, err := s.reads.Ledger(ctx, id, f)
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	data := map[string]any{
		"Account": show(a, ss.Role), "Kind": string(f.Kind), "Member": f.Member,
		"Kinds": []users.TxKind{users.TxInitial, users.TxDeduct, users.TxGrant, users.TxPlanBonus, users.TxAllowance, users.TxExpire},
		"Plans": []users.Plan{users.PlanFree, users.PlanPro, users.PlanEnterprise},
		"Keys":  map[string]string{"grant": newKey(), "deduct": newKey(), "plan": newKey(), "close": newKey()},
	}
	if f.BeforeID > 0 {
		data["First"] = ledgerURL(id, f, 0)
	}
	if len(ledger) > ledgerPageSize {
		ledger = ledger[:ledgerPageSize]
		data["Older"] = ledgerURL(id, f, ledger[len(ledger)-1].ID)
	}
	data["Ledger"] = ledger
	// The credits by expiry (live grants, the pool that never expires, the
	// next allowance). A deleted user's or organization's account has no
	// owner to name it by any more: the section says so instead.
	if !a.Deleted() {
		g, err := s.svc.ListGrants(ctx, users.AccountRef{ClerkUserID: a.ClerkUserID, ClerkOrgID: a.ClerkOrgID})
		if err != nil && apperr.KindOf(err) != apperr.KindNotFound {
			s.failErr(w, r, err)
			return
		}
		if err == nil {
			data["Grants"] = g
		}
	}
	if data["PlanChanges"], err = s.reads.PlanChanges(ctx, id, 10); err != nil {
		s.failErr(w, r, err)
		return
	}
	evs, err := s.reads.FeedTail(ctx, a, feedTailSize)
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	data["Events"] = feedRows(evs)
	if m, ok := doneMessages[qv.Get("done")]; ok {
		if qv.Get("replayed") == "1" {
			m = "Already applied (same form submitted again): nothing changed."
		}
		data["Done"] = m
	}
	s.render(w, r, "account", ss, "Account", data)
}

func ledgerURL(id uuid.UUID, f users.LedgerFilter, before int64) string {
	v := url.Values{}
	if f.Kind != "" {
		v.Set("kind", string(f.Kind))
	}
	if f.Member != "" {
		v.Set("member", f.Member)
	}
	if before > 0 {
		v.Set("before", strconv.FormatInt(before, 10))
	}
	u := "/accounts/" + id.String()
	if len(v) > 0 {
		u += "?" + v.Encode()
	}
	return u + "#ledger"
}

// usage is the page of the account's usage of the last usageDays days by
// day and reason. It sums every ledger entry of the window, so the
// account page does not wait for it: console.js moves its chart into the
// account page once loaded (without script, the account page links here).
func (s *Server) usage(w http.ResponseWriter, r *http.Request, ss session) {
	a, ok := s.loadAccount(w, r)
	if !ok {
		return
	}
	us, since, err := s.reads.Usage(r.Context(), a.ID, s.cfg.Now(), usageDays)
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	s.render(w, r, "usage", ss, "Usage", map[string]any{"Account": show(a, ss.Role), "Usage": chartOf(us, since, usageDays)})
}

// feedRow is one live event as the page and its JSON show it.
type feedRow struct {
	ID      int64  `json:"id"`
	Kind    string `json:"kind"`
	At      string `json:"at"`
	Actor   string `json:"actor"`
	Summary string `json:"summary"`
}

func feedRows(evs []users.FeedTailEvent) []feedRow {
	out := make([]feedRow, len(evs))
	for i, e := range evs {
		out[i] = feedRow{ID: e.ID, Kind: e.Kind, At: e.CreatedAt.UTC().Format("2006-01-02 15:04:05Z"), Actor: e.ActorClerkUserID, Summary: summarize(e.Payload)}
	}
	return out
}

// summarize picks the fields of an event payload an operator scans for.
func summarize(payload []byte) string {
	var p map[string]any
	if json.Unmarshal(payload, &p) != nil {
		return ""
	}
	var parts []string
	for _, k := range []string{"kind", "delta", "balance_after", "plan", "reason", "service"} {
		if v, ok := p[k]; ok && v != nil && v != "" {
			parts = append(parts, fmt.Sprintf("%s=%v", k, v))
		}
	}
	return strings.Join(parts, " ")
}

// accountEvents answers the page's live refresh: the latest events as
// JSON (rendered by console.js with textContent, never as HTML).
func (s *Server) accountEvents(w http.ResponseWriter, r *http.Request, _ session) {
	a, ok := s.loadAccount(w, r)
	if !ok {
		return
	}
	evs, err := s.reads.FeedTail(r.Context(), a, feedTailSize)
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(feedRows(evs))
}

// correct applies one correction from its form.
func (s *Server) correct(action string) handler {
	return func(w http.ResponseWriter, r *http.Request, ss session) {
		ctx := r.Context()
		a, ok := s.loadAccount(w, r)
		if !ok {
			return
		}
		id := a.ID
		var err error
		reason := strings.TrimSpace(r.PostFormValue("reason"))
		key := r.PostFormValue("idempotency_key")
		if reason == "" || key == "" {
			s.fail(w, r, http.StatusBadRequest, "Reason required", "Every correction needs a reason (and the form's key): go back, fill in the reason and submit again.")
			return
		}
		e := users.AuditEntry{Operator: ss.Operator, Role: string(ss.Role), Action: action, Reason: reason, IdempotencyKey: key, Details: map[string]any{}}
		var replayed bool
		switch action {
		case users.AuditGrant, users.AuditDeduct:
			amount, perr := strconv.ParseInt(r.PostFormValue("amount"), 10, 64)
			if perr != nil || amount <= 0 {
				s.fail(w, r, http.StatusBadRequest, "Amount required", "The amount must be a whole number of credits greater than 0.")
				return
			}
			e.Details["amount"] = amount
			c := users.CreditChange{ClerkUserID: a.ClerkUserID, ClerkOrgID: a.ClerkOrgID, Amount: amount, IdempotencyKey: key, Reason: reason, Service: "console"}
			var res users.CreditResult
			if action == users.AuditGrant {
				res, err = s.svc.GrantCredits(users.WithAudit(ctx, e), c)
			} else if !a.Personal() {
				err = apperr.InvalidArgument(apperr.FieldViolation{Field: "account", Description: "deductions from an organization's account are made by its members"})
			} else {
				res, err = s.svc.DeductCredits(users.WithAudit(ctx, e), c)
			}
			replayed = res.Replayed
		case users.AuditSetPlan:
			plan := users.Plan(r.PostFormValue("plan"))
			bonus := int64(0)
			if b := r.PostFormValue("bonus"); b != "" {
				if bonus, err = strconv.ParseInt(b, 10, 64); err != nil || bonus < 0 {
					s.fail(w, r, http.StatusBadRequest, "Bonus invalid", "The bonus must be a whole number of credits, 0 or more.")
					return
				}
			}
			e.Details["plan"], e.Details["bonus"] = string(plan), bonus
			in := users.SetPlanInput{ClerkUserID: a.ClerkUserID, ClerkOrgID: a.ClerkOrgID, Plan: plan, BonusCredits: bonus, IdempotencyKey: key, Reason: reason, Service: "console"}
			var res users.SetPlanResult
			res, err = s.svc.SetPlan(users.WithAudit(ctx, e), in)
			replayed = res.Replayed
		case users.AuditClose:
			replayed, err = s.reads.CloseAccount(users.WithAudit(ctx, e), id)
		}
		if err != nil {
			s.failErr(w, r, err)
			return
		}
		s.log.Info("console correction", "operator", ss.Operator, "action", action, "account", id, "replayed", replayed)
		u := "/accounts/" + id.String() + "?done=" + action
		if replayed {
			u += "&replayed=1"
		}
		http.Redirect(w, r, u, http.StatusSeeOther)
	}
}

func (s *Server) prices(w http.ResponseWriter, r *http.Request, ss session) {
	page, err := s.svc.ListPrices(r.Context(), 0, r.URL.Query().Get("page"))
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	data := map[string]any{"Prices": page.Prices, "Plans": []users.Plan{users.PlanFree, users.PlanPro, users.PlanEnterprise}}
	if page.NextPageToken != "" {
		data["Next"] = "/prices?" + url.Values{"page": {page.NextPageToken}}.Encode()
	}
	s.render(w, r, "prices", ss, "Prices and plans", data)
}

func (s *Server) webhooks(w http.ResponseWriter, r *http.Request, ss session) {
	ws, err := s.reads.UnappliedWebhooks(r.Context(), 100)
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	s.render(w, r, "webhooks", ss, "Webhook deliveries", map[string]any{"Deliveries": ws})
}

func (s *Server) syncRuns(w http.ResponseWriter, r *http.Request, ss session) {
	rs, err := s.reads.SyncRuns(r.Context())
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	s.render(w, r, "sync", ss, "Sync jobs", map[string]any{"Runs": rs})
}

// auditFilter reads the audit log's account filter and page.
func auditFilter(r *http.Request) (uuid.UUID, int64, error) {
	var id uuid.UUID
	if a := strings.TrimSpace(r.URL.Query().Get("account")); a != "" {
		var err error
		if id, err = uuid.Parse(a); err != nil {
			return uuid.Nil, 0, apperr.InvalidArgument(apperr.FieldViolation{Field: "account", Description: "must be an account id (UUID)"})
		}
	}
	before, _ := strconv.ParseInt(r.URL.Query().Get("before"), 10, 64)
	return id, before, nil
}

func (s *Server) audit(w http.ResponseWriter, r *http.Request, ss session) {
	id, before, err := auditFilter(r)
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	rs, err := s.reads.AuditLog(r.Context(), id, before, auditPageSize+1)
	if err != nil {
		s.failErr(w, r, err)
		return
	}
	data := map[string]any{"Account": r.URL.Query().Get("account")}
	if len(rs) > auditPageSize {
		rs = rs[:auditPageSize]
		v := url.Values{"before": {strconv.FormatInt(rs[len(rs)-1].ID, 10)}}
		if id != uuid.Nil {
			v.Set("account", id.String())
		}
		data["Next"] = "/audit?" + v.Encode()
	}
	data["Records"] = auditRows(rs)
	csvURL := "/audit.csv"
	if id != uuid.Nil {
		csvURL += "?account=" + id.String()
	}
	data["CSV"] = csvURL
	s.render(w, r, "audit", ss, "Audit log", data)
}

// auditRow is an audit record with its JSON columns as text.
type auditRow struct {
	users.AuditRecord
	DetailsText, BeforeText, AfterText string
}

func auditRows(rs []users.AuditRecord) []auditRow {
	out := make([]auditRow, len(rs))
	for i, r := range rs {
		out[i] = auditRow{AuditRecord: r, DetailsText: string(r.Details), BeforeText: string(r.Before), AfterText: string(r.After)}
	}
	return out
}
