package feed

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/consistency"
	"github.com/userd/userd/internal/users"
)

// Observer learns what a Hub does, for metrics.
type Observer interface {
	// FeedPolled reports a poll that found events.
	FeedPolled(events int)
	// FeedWatchers reports a watch starting (+1) or ending (-1).
	FeedWatchers(delta int)
	// FeedWatcherFellBehind reports a watcher switched from the live
	// fan-out to reading the database, because it did not keep up.
	FeedWatcherFellBehind()
}

type noObserver struct{}

func (noObserver) FeedPolled(int)         {}
func (noObserver) FeedWatchers(int)       {}
func (noObserver) FeedWatcherFellBehind() {}

// Invalidator is told what the hub hands out, to keep a cache of users
// correct (internal/store/readcache.go).
type Invalidator interface {
	// HubStarted reports the hub's starting head (an xid), before
	// anything else.
	HubStarted(head int64)
	// Evict is called with the users of the events of a poll before the
	// head moves past them.
	Evict(clerkUserIDs ...string)
	// HubAdvanced reports that every event whose order is below head has
	// been handed out (and its users evicted), among them every event
	// committed before coveredAt (the zero time: no news of that).
	HubAdvanced(head int64, coveredAt time.Time)
}

// Options tune a Hub. Zero values take the defaults.
type Options struct {
	// PollInterval is how often the hub asks the database for new events
	// when it found none (default 100ms); it asks again at once after a
	// full poll.
	PollInterval time.Duration
	// Heartbeat is how often a watch reports its cursor when it has
	// nothing else to send (default 15s).
	Heartbeat time.Duration
	// PollLimit bounds the events of one poll (default 1000).
	PollLimit int32
	// PageLimit bounds the events of one read of a watcher catching up
	// (default 500).
	PageLimit int32
	// QueueLength is how many polls' worth of events a watcher may have
	// pending before it is switched to reading the database at its own
	// pace (default 32).
	QueueLength int
	// Cursors seal the positions handed out; nil: a key of this process
	// only (tests), so its cursors resume on no other replica.
	Cursors  *Cursors
	Observer Observer
	Log      *slog.Logger
	// Invalidator, if set, learns of every poll (the hub polls whether
	// or not anyone watches).
	Invalidator Invalidator
}

func (o *Options) defaults() {
	if o.PollInterval <= 0 {
		o.PollInterval = 100 * time.Millisecond
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 15 * time.Second
	}
	if o.PollLimit <= 0 {
		o.PollLimit = 1000
	}
	if o.PageLimit <= 0 {
		o.PageLimit = 500
	}
	if o.QueueLength <= 0 {
		o.QueueLength = 32
	}
	if o.Cursors == nil {
		o.Cursors = newEphemeralCursors()
	}
	if o.Observer == nil {
		o.Observer = noObserver{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// maxPollBackoff bounds the wait between polls while the database fails.
const maxPollBackoff = 5 * time.Second

// maxCoverage bounds the polls whose coverage waits for the head to pass
// their xmax; past it the newest is replaced (a later time, a larger
// xmax: only ever later coverage).
const maxCoverage = 64

// coverage is what one poll tells the Invalidator once the head is at or
// past xmax: every event committed before sentAt is below xmax.
type coverage struct {
	xmax   int64
	sentAt time.Time
}

// Hub is one replica's reader of the feed. One goroutine (Run) polls the
// database and hands each batch of new events to the watchers it concerns,
// through a bounded queue each; a watcher whose queue is full is dropped
// from the fan-out and reads the database from its cursor instead, at the
// pace it can send. Every replica runs its own Hub over the same table, so
// a cursor from one replica resumes on any other.
type Hub struct {
	store Store
	opts  Options

	ready   chan struct{} // closed once head is known
	closing chan struct{} // closed by Close
	close   sync.Once

	mu   sync.Mutex
	head Position
	// headLSN is the WAL position of the read that moved head.
	headLSN uint64
	// all holds the watchers of every user, byUser those of one, byOrg
	// those of end users by the organizations they are members of.
	all    map[*watcher]struct{}
	byUser map[string]map[*watcher]struct{}
	byOrg  map[string]map[*watcher]struct{}
}

// NewHub returns a hub over store; call Run to start polling.
func NewHub(store Store, opts Options) *Hub {
	opts.defaults()
	return &Hub{
		store:   store,
		opts:    opts,
		ready:   make(chan struct{}),
		closing: make(chan struct{}),
		all:     map[*watcher]struct{}{},
		byUser:  map[string]map[*watcher]struct{}{},
		byOrg:   map[string]map[*watcher]struct{}{},
	}
}

// batch is one poll's events: every final event in (the previous head, to].
// Batches are shared by every watcher they concern and never modified.
type batch struct {
	to     Position
	lsn    uint64 // the page's (Page.LSN)
	events []Event
}

// watcher is one Watch call's registration with the hub.
type watcher struct {
	user  string        // "" for every user
	kinds map[Kind]bool // nil for every kind
	// orgsOf, for an end user's watch (Request.Organizations), lists the
	// organizations whose events it may see; orgs is its last answer,
	// replaced (under Hub.mu while joined) when one of the user's
	// memberships changes.
	orgsOf func(context.Context) ([]string, error)
	orgs   map[string]bool
	// queue holds batches for the watcher while it is joined; the hub
	// closes it when it drops the watcher.
	queue  chan *batch
	joined bool // guarded by Hub.mu
}

func (w *watcher) wants(ev *Event) bool {
	return w.visible(ev) && (w.kinds == nil || w.kinds[ev.Kind])
}

// visible reports whether ev is one the watcher may see: every event for
// a watch of every user; a user's own for a watch of one user; and, for
// an end user's watch, the events of the organizations it is a live
// member of and those of its own memberships (it learns it was removed).
func (w *watcher) visible(ev *Event) bool {
	switch {
	case w.user == "":
		return true
	case ev.ClerkOrgID == "" || w.orgsOf == nil:
		return ev.ClerkUserID == w.user
	}
	return w.orgs[ev.ClerkOrgID] || w.ownMembership(ev)
}

// ownMembership reports whether ev changes a membership of the watcher's
// end user: its organizations must be read again.
func (w *watcher) ownMembership(ev *Event) bool {
	return w.orgsOf != nil && ev.Kind.membership() && ev.MemberClerkUserID == w.user
}

// refreshOrgs reads the watcher's organizations again and reports whether
// it gained one (events of it may have passed the watcher by: it must read
// the database from its cursor).
func (h *Hub) refreshOrgs(ctx context.Context, w *watcher) (gained bool, err error) {
	ids, err := w.orgsOf(ctx)
	if err != nil {
		return false, err
	}
	orgs := make(map[string]bool, len(ids))
	for _, id := range ids {
		orgs[id] = true
		if !w.orgs[id] {
			gained = true
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.joined {
		h.unindexOrgsLocked(w)
	}
	w.orgs = orgs
	if w.joined {
		h.indexOrgsLocked(w)
	}
	return gained, nil
}

func (h *Hub) indexOrgsLocked(w *watcher) {
	for org := range w.orgs {
		m := h.byOrg[org]
		if m == nil {
			m = map[*watcher]struct{}{}
			h.byOrg[org] = m
		}
		m[w] = struct{}{}
	}
}

func (h *Hub) unindexOrgsLocked(w *watcher) {
	for org := range w.orgs {
		if m := h.byOrg[org]; m != nil {
			delete(m, w)
			if len(m) == 0 {
				delete(h.byOrg, org)
			}
		}
	}
}

// Run polls the database until ctx ends, then closes the hub.
func (h *Hub) Run(ctx context.Context) {
	defer h.Close()
	backoff := h.opts.PollInterval
	failing := false
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-h.closing:
			return false
		case <-t.C:
			return true
		}
	}
	fail := func(err error) bool {
		if ctx.Err() != nil {
			return false
		}
		if !failing {
			h.opts.Log.Warn("change feed: polling the database failed; retrying", "err", err)
			failing = true
		}
		backoff = min(2*backoff, maxPollBackoff)
		return wait(backoff)
	}
	var pending []coverage
	covered := func(page Page, sentAt time.Time) {
		inv := h.opts.Invalidator
		if inv == nil {
			return
		}
		c := coverage{xmax: page.Xmax, sentAt: sentAt}
		if len(pending) < maxCoverage {
			pending = append(pending, c)
		} else {
			pending[len(pending)-1] = c
		}
		head := h.headNow().Xid
		var at time.Time
		for len(pending) > 0 && pending[0].xmax <= head {
			at = pending[0].sentAt
			pending = pending[1:]
		}
		inv.HubAdvanced(head, at)
	}
	// Start at the present: watchers that want older events read them
	// from the database.
	for {
		sentAt := time.Now()
		page, err := h.store.ReadUserEvents(ctx, Position{Xid: math.MaxInt64}, "", 1)
		if err == nil {
			if h.opts.Invalidator != nil {
				h.opts.Invalidator.HubStarted(page.Horizon)
			}
			h.mu.Lock()
			h.head, h.headLSN = Position{Xid: page.Horizon}, page.LSN
			h.mu.Unlock()
			covered(page, sentAt)
			close(h.ready)
			break
		}
		if !fail(err) {
			return
		}
	}
	for {
		sentAt := time.Now()
		page, err := h.store.ReadUserEvents(ctx, h.head, "", h.opts.PollLimit)
		if err != nil {
			if !fail(err) {
				return
			}
			continue
		}
		if failing {
			h.opts.Log.Info("change feed: polling the database works again")
			failing = false
		}
		backoff = h.opts.PollInterval
		to := h.head
		if n := len(page.Events); n > 0 {
			to = page.Events[n-1].Position
		}
		full := len(page.Events) == int(h.opts.PollLimit)
		if !full {
			to = maxPosition(to, Position{Xid: page.Horizon})
		}
		if h.head.Less(to) {
			h.publish(&batch{to: to, lsn: page.LSN, events: page.Events})
		}
		covered(page, sentAt)
		if !full && !wait(h.opts.PollInterval) {
			return
		}
	}
}

// publish moves the head to b.to and queues b for every joined watcher
// that wants one of its events; a watcher whose queue is full is dropped.
func (h *Hub) publish(b *batch) {
	if inv := h.opts.Invalidator; inv != nil && len(b.events) > 0 {
		ids := make([]string, 0, len(b.events))
		for i := range b.events {
			if id := b.events[i].ClerkUserID; id != "" {
				ids = append(ids, id)
			}
		}
		inv.Evict(ids...)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.head, h.headLSN = b.to, max(h.headLSN, b.lsn)
	if len(b.events) == 0 {
		return
	}
	h.opts.Observer.FeedPolled(len(b.events))
	targets := make(map[*watcher]struct{})
	for w := range h.all {
		if w.kinds == nil {
			targets[w] = struct{}{}
		}
	}
	for i := range b.events {
		ev := &b.events[i]
		for w := range h.all {
			if w.kinds != nil && w.kinds[ev.Kind] {
				targets[w] = struct{}{}
			}
		}
		if ev.ClerkUserID != "" {
			for w := range h.byUser[ev.ClerkUserID] {
				if w.wants(ev) {
					targets[w] = struct{}{}
				}
			}
		}
		if ev.ClerkOrgID != "" {
			for w := range h.byOrg[ev.ClerkOrgID] {
				if w.wants(ev) {
					targets[w] = struct{}{}
				}
			}
			if ev.MemberClerkUserID != "" {
				// An end user's own membership changed: its watch reads
				// its organizations again, whatever kinds it wants.
				for w := range h.byUser[ev.MemberClerkUserID] {
					if w.ownMembership(ev) {
						targets[w] = struct{}{}
					}
				}
			}
		}
	}
	for w := range targets {
		select {
		case w.queue <- b:
		default:
			h.dropLocked(w)
			h.opts.Observer.FeedWatcherFellBehind()
		}
	}
}

// join adds w to the fan-out if cursor is at or past the head, so that
// every event after cursor reaches it through its queue; false means w
// must read more from the database first.
func (h *Hub) join(w *watcher, cursor Position) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if cursor.Less(h.head) {
		return false
	}
	h.joinLocked(w)
	return true
}

// joinNow adds w to the fan-out at the head and returns the head and
// its LSN.
func (h *Hub) joinNow(w *watcher) (Position, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.joinLocked(w)
	return h.head, h.headLSN
}

// headNow returns the head.
func (h *Hub) headNow() Position {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.head
}

func (h *Hub) joinLocked(w *watcher) {
	w.joined = true
	if w.user == "" {
		h.all[w] = struct{}{}
		return
	}
	m := h.byUser[w.user]
	if m == nil {
		m = map[*watcher]struct{}{}
		h.byUser[w.user] = m
	}
	m[w] = struct{}{}
	h.indexOrgsLocked(w)
}

// dropLocked removes w from the fan-out and closes its queue after
// emptying it, so that a watcher that fell behind holds at most the batch
// it is sending and re-reads the rest from the database.
func (h *Hub) dropLocked(w *watcher) {
	if !w.joined {
		return
	}
	w.joined = false
	if w.user == "" {
		delete(h.all, w)
	} else if m := h.byUser[w.user]; m != nil {
		delete(m, w)
		if len(m) == 0 {
			delete(h.byUser, w.user)
		}
	}
	h.unindexOrgsLocked(w)
	for {
		select {
		case <-w.queue:
			continue
		default:
		}
		break
	}
	close(w.queue)
}

// leave removes w when its watch ends.
func (h *Hub) leave(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLocked(w)
}

// settled returns the cursor a joined watcher with nothing pending is at
// (every event up to the head that it wants has passed through its
// queue), and the LSN of the read that found it.
func (h *Hub) settled(w *watcher, cursor Position, lsn uint64) (Position, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.joined && len(w.queue) == 0 && !h.head.Less(cursor) {
		return h.head, max(lsn, h.headLSN)
	}
	return cursor, lsn
}

// Close ends every watch (with ErrClosing) and refuses new ones. Call it
// before stopping the servers, so that their graceful stop does not wait
// for streams that never end on their own.
func (h *Hub) Close() {
	h.close.Do(func() { close(h.closing) })
}

// Start says where a watch begins.
type Start int

const (
	// StartNow delivers events committed from about now on.
	StartNow Start = iota
	// StartOldest delivers every retained event first.
	StartOldest
	// StartAfter resumes after Request.After.
	StartAfter
)

// Request is what a watcher asks for.
type Request struct {
	Start Start
	// After is the position to resume after, with StartAfter.
	After Position
	// ClerkUserID limits the watch to one user's events, when set.
	ClerkUserID string
	// Organizations, when set (with ClerkUserID), makes the watch an end
	// user's: besides the user's own events it sees those of the
	// organizations Organizations returns (the user's live memberships)
	// and of its own memberships, and nothing of any other organization.
	// It is asked at the start and again whenever one of the user's
	// memberships changes during the watch.
	Organizations func(ctx context.Context) ([]string, error)
	// Kinds limits the watch to these kinds, when not empty.
	Kinds []Kind
	// Standby lets the watch's catch-up reads (from its cursor, or after
	// falling behind) be served by a hot standby (internal/standby) that
	// has replayed Token (the zero Token: any within the lag bound). The
	// hub's own polls, and everything else, read the primary.
	Standby bool
	Token   consistency.Token
}

func (r Request) validate() error {
	var violations []apperr.FieldViolation
	if r.ClerkUserID != "" {
		if err := users.CheckClerkUserID("clerk_user_id", r.ClerkUserID); err != nil {
			return err
		}
	}
	for _, k := range r.Kinds {
		if !k.Valid() {
			violations = append(violations, apperr.FieldViolation{Field: "kinds", Description: "unknown event kind"})
			break
		}
	}
	if len(violations) > 0 {
		return apperr.InvalidArgument(violations...)
	}
	return nil
}

// Sink receives what a watch sends. Its methods may block: the watch
// waits, and nothing is queued for it meanwhile.
type Sink interface {
	// Event sends one event; its Position is the cursor to resume after,
	// its LSN a WAL position at or past its commit.
	Event(Event) error
	// Heartbeat sends the cursor the watch is at when it has nothing else
	// to send (at the start, then every Options.Heartbeat), and a WAL
	// position at or past the commit of every event before it (0:
	// unknown).
	Heartbeat(cursor Position, lsn uint64) error
}

// ErrClosing ends watches when the hub closes (userd shutting down).
var ErrClosing = &apperr.Error{
	Kind:    apperr.KindUnavailable,
	Message: "userd is shutting down: watch again, from the last cursor received",
	Err:     errors.New("change feed closed"),
}

// Cursors seals and opens the hub's cursors.
func (h *Hub) Cursors() *Cursors { return h.opts.Cursors }

// cursorExpired is the error of a cursor older than the retained events.
func (h *Hub) cursorExpired(ctx context.Context, oldest Position) error {
	c, err := h.opts.Cursors.Format(ctx, oldest)
	if err != nil {
		return err
	}
	return &apperr.Error{
		Kind: apperr.KindExpired,
		Message: "cursor is older than the events userd keeps (USERD_FEED_RETENTION): " +
			"resynchronise your copy with GetUser and ListCreditTransactions, then watch from now",
		Reason:   apperr.ReasonCursorExpired,
		Metadata: map[string]string{"oldest_cursor": c},
	}
}

// Watch sends, in feed order, every event the request selects, until ctx
// ends, the sink fails or the hub closes. Every event reaches the sink
// once per watch; a consumer that resumes from an older cursor sees the
// events after it again (at least once overall: de-duplicate by Event.ID).
func (h *Hub) Watch(ctx context.Context, req Request, sink Sink) error {
	if err := req.validate(); err != nil {
		return err
	}
	select {
	case <-h.ready:
	case <-h.closing:
		return ErrClosing
	case <-ctx.Done():
		return ctx.Err()
	}
	w := &watcher{user: req.ClerkUserID, queue: make(chan *batch, h.opts.QueueLength)}
	if req.Organizations != nil && req.ClerkUserID != "" {
		w.orgsOf = req.Organizations
		if _, err := h.refreshOrgs(ctx, w); err != nil {
			return err
		}
	}
	if len(req.Kinds) > 0 {
		w.kinds = map[Kind]bool{}
		for _, k := range req.Kinds {
			w.kinds[k] = true
		}
	}
	h.opts.Observer.FeedWatchers(1)
	defer h.opts.Observer.FeedWatchers(-1)
	defer h.leave(w)

	var (
		cursor Position
		lsn    uint64 // of the reads the watch has sent events up to cursor from
	)
	live := false
	switch req.Start {
	case StartNow:
		cursor, lsn = h.joinNow(w)
		live = true
	case StartAfter:
		cursor = req.After
	}
	// Events older than the retention are gone: a cursor before them has
	// missed some, but a watch from the oldest starts after them.
	fromOldest := req.Start == StartOldest
	// A standby's page is used only when it takes the watch forward. One
	// whose horizon is below the cursor has not replayed as far as the
	// watch has been (it would take the cursor for one of another
	// database): the primary serves that read. A partial one whose
	// horizon is below the hub's head lets the watch send its events but
	// not join the fan-out (it would miss the events between): the next
	// read is the primary's, so that a standby that stays behind never
	// keeps a watch reading in a loop. Either way every page handed out
	// has all the final events after the cursor and below its horizon, as
	// a page of the primary has (the standby's snapshot is one the
	// primary had: a transaction below its horizon has finished there
	// too), so nothing is skipped whichever node serves it.
	primaryNext := false
	read := func() (Page, error) {
		// An end user's watch reads every event and keeps the ones it
		// may see: the events of its organizations, and of its own
		// memberships, are on the organizations' streams, not the user's.
		of := w.user
		if w.orgsOf != nil {
			of = ""
		}
		primary := consistency.PrimaryOnly(ctx)
		rctx := primary
		if req.Standby && !primaryNext {
			rctx = consistency.AllowStandby(ctx, req.Token)
		}
		primaryNext = false
		page, err := h.store.ReadUserEvents(rctx, cursor, of, h.opts.PageLimit)
		if err == nil && page.Standby && cursor.Xid > page.Horizon {
			page, err = h.store.ReadUserEvents(primary, cursor, of, h.opts.PageLimit)
		}
		if err != nil {
			return Page{}, err
		}
		if page.Standby && len(page.Events) < int(h.opts.PageLimit) && (Position{Xid: page.Horizon}).Less(h.headNow()) {
			primaryNext = true
		}
		if cursor.Xid > page.Horizon {
			// Every cursor of this feed is at or below the horizon, which
			// only grows: this one comes from another database (a restore
			// from backup, another environment), where it would skip
			// events silently.
			return Page{}, apperr.InvalidArgument(apperr.FieldViolation{
				Field: "cursor", Description: "is ahead of this feed: it was not issued by this database",
			})
		}
		if cursor.Less(page.Pruned) {
			if !fromOldest {
				return Page{}, h.cursorExpired(ctx, page.Pruned)
			}
			cursor = page.Pruned
		}
		fromOldest = false
		return page, nil
	}
	// A watch that starts with a read fails before sending anything when
	// its cursor expired.
	var first *Page
	if !live {
		page, err := read()
		if err != nil {
			return err
		}
		first = &page
	}
	if first != nil {
		lsn = first.LSN
	}
	if err := sink.Heartbeat(cursor, lsn); err != nil {
		return err
	}
	beat := time.NewTicker(h.opts.Heartbeat)
	defer beat.Stop()
	for {
		if !live {
			var page Page
			if first != nil {
				page, first = *first, nil
			} else {
				var err error
				if page, err = read(); err != nil {
					return err
				}
			}
			for i := range page.Events {
				ev := &page.Events[i]
				if w.ownMembership(ev) {
					if _, err := h.refreshOrgs(ctx, w); err != nil {
						return err
					}
				}
				if w.wants(ev) {
					if err := sink.Event(withLSN(ev, page.LSN)); err != nil {
						return err
					}
				}
				cursor = ev.Position
			}
			lsn = max(lsn, page.LSN)
			if len(page.Events) < int(h.opts.PageLimit) {
				cursor = maxPosition(cursor, Position{Xid: page.Horizon})
				live = h.join(w, cursor)
			}
			select {
			case <-beat.C:
				if err := sink.Heartbeat(cursor, lsn); err != nil {
					return err
				}
			case <-ctx.Done():
				return ctx.Err()
			case <-h.closing:
				return ErrClosing
			default:
			}
			continue
		}
		select {
		case b, ok := <-w.queue:
			if !ok {
				// Dropped for falling behind: read the database from
				// the cursor, then join again.
				w.queue = make(chan *batch, h.opts.QueueLength)
				live = false
				continue
			}
			gainedAny := false
			for i := range b.events {
				ev := &b.events[i]
				if !cursor.Less(ev.Position) {
					continue
				}
				if w.ownMembership(ev) {
					gained, err := h.refreshOrgs(ctx, w)
					if err != nil {
						return err
					}
					gainedAny = gainedAny || gained
				}
				if w.wants(ev) {
					if err := sink.Event(withLSN(ev, b.lsn)); err != nil {
						return err
					}
				}
			}
			cursor = maxPosition(cursor, b.to)
			lsn = max(lsn, b.lsn)
			if gainedAny {
				// Batches published before the watcher knew of its new
				// organization skipped their events: leave the fan-out
				// and read the database from here, then join again.
				h.leave(w)
				w.queue = make(chan *batch, h.opts.QueueLength)
				live = false
			}
		case <-beat.C:
			cursor, lsn = h.settled(w, cursor, lsn)
			if err := sink.Heartbeat(cursor, lsn); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-h.closing:
			return ErrClosing
		}
	}
}

// withLSN returns a copy of ev (batches are shared) with the LSN of the
// read that found it.
func withLSN(ev *Event, lsn uint64) Event {
	e := *ev
	e.LSN = lsn
	return e
}

// pruneBatch bounds one deletion of old events.
const pruneBatch = 10000

// Prune deletes the events created before a time, in batches, and returns
// how many it deleted. Watchers whose cursor is older fail with
// CURSOR_EXPIRED.
func Prune(ctx context.Context, store Store, before time.Time) (int64, error) {
	var total int64
	for {
		n, err := store.PruneUserEvents(ctx, before, pruneBatch)
		total += n
		if err != nil {
			return total, err
		}
		if n < pruneBatch {
			return total, nil
		}
	}
}
