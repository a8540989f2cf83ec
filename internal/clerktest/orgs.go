package clerktest

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/userd/userd/internal/clerkhook"
)

// The fake's organizations: GET /v1/organizations, GET
// /v1/organizations/{id} and GET /v1/organizations/{id}/memberships as
// Clerk's Backend API serves them ({data, total_count}, limit 1–500,
// offset, order_by ±created_at, user_id filter on memberships).

type org struct {
	state   clerkhook.SampleOrg
	deleted bool
}

type membership struct {
	state     clerkhook.SampleMembership
	createdAt time.Time
	deleted   bool
}

// SetOrganization makes the Backend API know an organization (created at
// o.CreatedAt, or o.UpdatedAt when unset), or gives a known one a new
// state. A deleted organization cannot come back.
func (c *Clerk) SetOrganization(o clerkhook.SampleOrg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if o.CreatedAt.IsZero() {
		if old, ok := c.orgs[o.ID]; ok {
			o.CreatedAt = old.state.CreatedAt
		} else {
			o.CreatedAt = o.UpdatedAt
		}
	}
	if old, ok := c.orgs[o.ID]; ok {
		if old.deleted {
			c.t.Errorf("clerktest: SetOrganization(%s) after DeleteOrganization", o.ID)
			return
		}
		old.state = o
		return
	}
	c.orgs[o.ID] = &org{state: o}
}

// DeleteOrganization deletes an organization and its memberships.
func (c *Clerk) DeleteOrganization(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if o, ok := c.orgs[id]; ok {
		o.deleted = true
	}
	for _, m := range c.memberships {
		if m.state.Org.ID == id {
			m.deleted = true
		}
	}
}

// SetMembership makes the Backend API know a membership of an
// organization it knows (m.Org.ID), or gives a known one a new state.
func (c *Clerk) SetMembership(m clerkhook.SampleMembership) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.memberships[m.ID]; ok {
		if old.deleted {
			c.t.Errorf("clerktest: SetMembership(%s) after DeleteMembership", m.ID)
			return
		}
		old.state = m
		return
	}
	c.memberships[m.ID] = &membership{state: m, createdAt: m.UpdatedAt}
}

// DeleteMembership deletes a membership.
func (c *Clerk) DeleteMembership(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m, ok := c.memberships[id]; ok {
		m.deleted = true
	}
}

// LiveOrganizations returns the organizations not deleted, by id.
func (c *Clerk) LiveOrganizations() []clerkhook.SampleOrg {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []clerkhook.SampleOrg
	for _, o := range c.orgs {
		if !o.deleted {
			out = append(out, o.state)
		}
	}
	slices.SortFunc(out, func(a, b clerkhook.SampleOrg) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// LiveMemberships returns the memberships not deleted, by id.
func (c *Clerk) LiveMemberships() []clerkhook.SampleMembership {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []clerkhook.SampleMembership
	for _, m := range c.memberships {
		if !m.deleted {
			out = append(out, m.state)
		}
	}
	slices.SortFunc(out, func(a, b clerkhook.SampleMembership) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// pageParams reads limit (1–500, default 10), offset and order_by
// (±created_at, default -created_at), answering 422 as Clerk does.
func pageParams(w http.ResponseWriter, r *http.Request) (limit, offset int, descending, ok bool) {
	q := r.URL.Query()
	limit = 10
	var err error
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 500 {
			writeError(w, http.StatusUnprocessableEntity, "form_param_value_invalid", "limit must be between 1 and 500")
			return 0, 0, false, false
		}
	}
	if s := q.Get("offset"); s != "" {
		if offset, err = strconv.Atoi(s); err != nil || offset < 0 {
			writeError(w, http.StatusUnprocessableEntity, "form_param_value_invalid", "offset must be >= 0")
			return 0, 0, false, false
		}
	}
	orderBy := cmp.Or(q.Get("order_by"), "-created_at")
	if strings.TrimLeft(orderBy, "+-") != "created_at" {
		writeError(w, http.StatusUnprocessableEntity, "form_param_value_invalid", "the fake orders by created_at only")
		return 0, 0, false, false
	}
	return limit, offset, strings.HasPrefix(orderBy, "-"), true
}

func writeList(w http.ResponseWriter, data []any, total int) {
	if data == nil {
		data = []any{}
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"data": data, "total_count": total})
}

func (c *Clerk) orgsDisabled(w http.ResponseWriter) bool {
	if !c.OrganizationsDisabled.Load() {
		return false
	}
	writeError(w, http.StatusForbidden, "organization_not_enabled_in_instance",
		"The organizations feature is not enabled for this instance.")
	return true
}

func (c *Clerk) serveOrgList(w http.ResponseWriter, r *http.Request) {
	if c.orgsDisabled(w) {
		return
	}
	limit, offset, descending, ok := pageParams(w, r)
	if !ok {
		return
	}
	c.mu.Lock()
	var live []clerkhook.SampleOrg
	for _, o := range c.orgs {
		if !o.deleted {
			live = append(live, o.state)
		}
	}
	c.mu.Unlock()
	slices.SortFunc(live, func(a, b clerkhook.SampleOrg) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
	if descending {
		slices.Reverse(live)
	}
	if c.IgnoreOffset.Load() {
		offset = 0
	}
	var data []any
	for _, o := range live[min(offset, len(live)):min(offset+limit, len(live))] {
		data = append(data, clerkhook.SampleOrgObject(o))
	}
	writeList(w, data, len(live))
}

func (c *Clerk) serveOrg(w http.ResponseWriter, r *http.Request) {
	if c.orgsDisabled(w) {
		return
	}
	c.mu.Lock()
	o, ok := c.orgs[r.PathValue("id")]
	var state clerkhook.SampleOrg
	if ok && !o.deleted {
		state = o.state
	}
	c.mu.Unlock()
	if !ok || o.deleted {
		writeError(w, http.StatusNotFound, "resource_not_found", "not found")
		return
	}
	_ = json.NewEncoder(w).Encode(clerkhook.SampleOrgObject(state))
}

func (c *Clerk) serveMembershipList(w http.ResponseWriter, r *http.Request) {
	if c.orgsDisabled(w) {
		return
	}
	limit, offset, descending, ok := pageParams(w, r)
	if !ok {
		return
	}
	orgID, userIDs := r.PathValue("id"), r.URL.Query()["user_id"]
	c.mu.Lock()
	o, known := c.orgs[orgID]
	var live []*membership
	var orgState clerkhook.SampleOrg
	if known && !o.deleted {
		orgState = o.state
		for _, m := range c.memberships {
			if !m.deleted && m.state.Org.ID == orgID && (len(userIDs) == 0 || slices.Contains(userIDs, m.state.UserID)) {
				live = append(live, m)
			}
		}
	}
	c.mu.Unlock()
	if !known || o.deleted {
		writeError(w, http.StatusNotFound, "resource_not_found", "not found")
		return
	}
	slices.SortFunc(live, func(a, b *membership) int {
		return cmp.Or(a.createdAt.Compare(b.createdAt), strings.Compare(a.state.ID, b.state.ID))
	})
	if descending {
		slices.Reverse(live)
	}
	var data []any
	for _, m := range live[min(offset, len(live)):min(offset+limit, len(live))] {
		st := m.state
		st.Org = orgState
		data = append(data, clerkhook.SampleMembershipObject(st))
	}
	writeList(w, data, len(live))
}
