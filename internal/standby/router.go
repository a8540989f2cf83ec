package standby

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/consistency"
)

// Node is one standby: a pool of connections to that host alone.
type Node struct {
	// Name identifies it in metrics and logs (host:port).
	Name string
	Pool *pgxpool.Pool
}

// Options configures a Router.
type Options struct {
	// MaxLag is the most a standby's state may lag the primary's for a
	// read to be served by it (a read with a token also needs the
	// standby to have replayed the token's position).
	MaxLag time.Duration
	// TokenWait is how long a read with a token waits for a standby to
	// replay that far before it runs on the primary.
	TokenWait time.Duration
	// ProbeInterval is how often the primary's WAL position is sampled
	// and each standby's replay position read; 0: MaxLag/4, between
	// 10 ms and 250 ms.
	ProbeInterval time.Duration
	// AcquireTimeout bounds the wait for a standby connection (then the
	// next standby, or the primary, serves the read); 0: 1 s.
	AcquireTimeout time.Duration
	Log            *slog.Logger
}

// Router serves reads from standbys (Reads) and measures their lag (Run).
type Router struct {
	primary *pgxpool.Pool
	nodes   []*node
	opts    Options
	next    atomic.Uint32

	mu      sync.Mutex
	samples []sample // of the primary's WAL insert position, oldest first

	served [numOutcomes]atomic.Uint64
}

type sample struct {
	at  time.Time // when the query was sent
	lsn uint64
}

type node struct {
	Node
	mu     sync.Mutex
	up     bool // answered the last probe, in recovery
	known  bool // probed at least once
	replay uint64
	lag    time.Duration
	behind uint64 // bytes of WAL behind the primary's last sample
}

// Outcomes of a read the context allowed on a standby.
type outcome int

const (
	servedStandby    outcome = iota // a standby served it
	primaryNoneUp                   // no standby answering and in recovery
	primaryLagging                  // none within MaxLag
	primaryTokenWait                // none reached the token within TokenWait
	primaryError                    // the standby failed the statement
	numOutcomes
)

var outcomeNames = [numOutcomes][2]string{
	{"standby", "ok"},
	{"primary", "no_standby"},
	{"primary", "lagging"},
	{"primary", "token_wait"},
	{"primary", "error"},
}

// New returns a Router over the primary's pool and the standbys.
func New(primary *pgxpool.Pool, standbys []Node, opts Options) *Router {
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = min(max(opts.MaxLag/4, 10*time.Millisecond), 250*time.Millisecond)
	}
	if opts.AcquireTimeout <= 0 {
		opts.AcquireTimeout = time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	r := &Router{primary: primary, opts: opts}
	for _, s := range standbys {
		r.nodes = append(r.nodes, &node{Node: s})
	}
	return r
}

const (
	stmtReplay = "SELECT pg_is_in_recovery(), coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0)"
	probeWait  = 2 * time.Second
)

// Run samples the primary's WAL position and probes every standby each
// ProbeInterval until ctx ends.
func (r *Router) Run(ctx context.Context) {
	t := time.NewTicker(r.opts.ProbeInterval)
	defer t.Stop()
	for {
		r.Probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Probe samples the primary's position, then reads each standby's.
func (r *Router) Probe(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, probeWait)
	defer cancel()
	at := time.Now()
	var lsn int64
	if err := r.primary.QueryRow(pctx, stmtInsertLSN).Scan(&lsn); err == nil {
		r.addSample(sample{at: at, lsn: uint64(lsn)})
	}
	for _, n := range r.nodes {
		var (
			rec    bool
			replay int64
		)
		err := n.Pool.QueryRow(pctx, stmtReplay).Scan(&rec, &replay)
		n.mu.Lock()
		was := n.up
		n.up = err == nil && rec
		if err == nil {
			n.known, n.replay = true, uint64(replay)
			n.lag = r.lagOf(n.replay)
			n.behind = 0
			if newest, ok := r.newest(); ok && newest.lsn > n.replay {
				n.behind = newest.lsn - n.replay
			}
		}
		up := n.up
		n.mu.Unlock()
		switch {
		case was && !up && err != nil:
			r.opts.Log.Warn("standby not answering: its reads go elsewhere", "standby", n.Name, "err", err)
		case was && !up:
			r.opts.Log.Warn("standby is no longer in recovery (promoted?): it serves no more reads", "standby", n.Name)
		case !was && up:
			r.opts.Log.Info("standby serves reads", "standby", n.Name)
		}
	}
}

func (r *Router) addSample(s sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.samples = append(r.samples, s)
	// Keep what can tell lags up to twice the bound.
	keep := s.at.Add(-2*r.opts.MaxLag - time.Second)
	i := 0
	for i < len(r.samples)-1 && r.samples[i].at.Before(keep) {
		i++
	}
	if i > 0 {
		r.samples = append(r.samples[:0], r.samples[i:]...)
	}
}

func (r *Router) newest() (sample, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.samples) == 0 {
		return sample{}, false
	}
	return r.samples[len(r.samples)-1], true
}

// UnknownLag is the lag of a standby behind every sample kept (or before
// the first sample): more than any bound.
const UnknownLag = time.Duration(1<<63 - 1)

// lagOf is how stale a standby that has replayed up to replay is, at
// most: the time since the newest sample of the primary's insert position
// that it has replayed. Everything visible on the primary when that
// sample was sent had its commit record inserted before it, so the
// standby shows at least the primary's state of then. A caught-up
// standby reads between 0 and ProbeInterval; a primary that answers no
// samples (down, failing over) makes every standby's lag grow, so reads
// without a token stop being served from standbys after MaxLag.
func (r *Router) lagOf(replay uint64) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.samples) - 1; i >= 0; i-- {
		if r.samples[i].lsn <= replay {
			return time.Since(r.samples[i].at)
		}
	}
	return UnknownLag
}

// Reads returns a DBTX that runs the reads of contexts that allow it
// (AllowStandby) on a standby fit to serve them, and everything else on
// primary.
func (r *Router) Reads(primary DBTX) DBTX {
	return reads{r: r, primary: primary}
}

type reads struct {
	r       *Router
	primary DBTX
}

// Writes never come here; Exec is the primary's.
func (x reads) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return x.primary.Exec(ctx, sql, args...)
}

func (x reads) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	p, ok := consistency.StandbyAllowed(ctx)
	if !ok || len(x.r.nodes) == 0 {
		return x.primary.QueryRow(ctx, sql, args...)
	}
	conn, br := x.r.standbyBatch(ctx, p, sql, args)
	if conn == nil {
		return x.primary.QueryRow(ctx, sql, args...)
	}
	return &standbyRow{x: x, ctx: ctx, conn: conn, br: br, sql: sql, args: args}
}

func (x reads) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	p, ok := consistency.StandbyAllowed(ctx)
	if !ok || len(x.r.nodes) == 0 {
		return x.primary.Query(ctx, sql, args...)
	}
	conn, br := x.r.standbyBatch(ctx, p, sql, args)
	if conn == nil {
		return x.primary.Query(ctx, sql, args...)
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		conn.Release()
		x.r.served[servedStandby].Add(^uint64(0))
		x.r.served[primaryError].Add(1)
		return x.primary.Query(ctx, sql, args...)
	}
	return &standbyRows{Rows: rows, conn: conn, br: br}, nil
}

// standbyRow is a standby's answer; a statement the standby failed (a
// recovery conflict, say) runs again on the primary.
type standbyRow struct {
	x    reads
	ctx  context.Context
	conn *pgxpool.Conn
	br   pgx.BatchResults
	sql  string
	args []any
}

func (r *standbyRow) Scan(dest ...any) error {
	err := r.br.QueryRow().Scan(dest...)
	_ = r.br.Close()
	r.conn.Release()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && r.ctx.Err() == nil {
		r.x.r.served[servedStandby].Add(^uint64(0))
		r.x.r.served[primaryError].Add(1)
		return r.x.primary.QueryRow(r.ctx, r.sql, r.args...).Scan(dest...)
	}
	return err
}

type standbyRows struct {
	pgx.Rows
	conn *pgxpool.Conn
	br   pgx.BatchResults
	done bool
}

func (r *standbyRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

func (r *standbyRows) Close() {
	r.Rows.Close()
	if !r.done {
		r.done = true
		_ = r.br.Close()
		r.conn.Release()
	}
}

// standbyBatch sends the position check and the statement to a standby
// fit for p and returns the connection and results, positioned at the
// statement's; nil when the primary must serve the read.
func (r *Router) standbyBatch(ctx context.Context, p consistency.Token, sql string, args []any) (*pgxpool.Conn, pgx.BatchResults) {
	var deadline time.Time
	if p.LSN != 0 {
		deadline = time.Now().Add(r.opts.TokenWait)
	}
	for {
		why := primaryNoneUp
		for _, n := range r.candidates() {
			conn, br, rec, replay, err := r.send(ctx, n, sql, args)
			if err != nil {
				if ctx.Err() != nil {
					return nil, nil
				}
				why = primaryError
				continue
			}
			if rec && replay >= p.LSN && r.lagOf(replay) <= r.opts.MaxLag {
				r.served[servedStandby].Add(1)
				return conn, br
			}
			_ = br.Close()
			conn.Release()
			switch {
			case !rec:
				n.markDown()
			case replay < p.LSN:
				why = primaryTokenWait
			case why != primaryTokenWait:
				why = primaryLagging
			}
		}
		// Only a standby short of the token is worth waiting for: one
		// that lags past the bound may take any time to catch up.
		if why != primaryTokenWait || !r.waitReplay(ctx, p.LSN, deadline) {
			r.served[why].Add(1)
			return nil, nil
		}
	}
}

// candidates are the standbys that answered their last probe in
// recovery, starting at the next in turn.
func (r *Router) candidates() []*node {
	out := make([]*node, 0, len(r.nodes))
	start := int(r.next.Add(1))
	for i := range r.nodes {
		n := r.nodes[(start+i)%len(r.nodes)]
		n.mu.Lock()
		up := n.up
		n.mu.Unlock()
		if up {
			out = append(out, n)
		}
	}
	return out
}

func (n *node) markDown() {
	n.mu.Lock()
	n.up = false
	n.mu.Unlock()
}

func (n *node) noteReplay(replay uint64) {
	n.mu.Lock()
	n.replay = max(n.replay, replay)
	n.mu.Unlock()
}

// send runs the position check and the statement on n in one round trip
// and reads the check.
func (r *Router) send(ctx context.Context, n *node, sql string, args []any) (*pgxpool.Conn, pgx.BatchResults, bool, uint64, error) {
	actx, cancel := context.WithTimeout(ctx, r.opts.AcquireTimeout)
	conn, err := n.Pool.Acquire(actx)
	cancel()
	if err != nil {
		return nil, nil, false, 0, err
	}
	b := &pgx.Batch{}
	b.Queue(stmtReplay)
	b.Queue(sql, args...)
	br := conn.SendBatch(ctx, b)
	var (
		rec    bool
		replay int64
	)
	if err := br.QueryRow().Scan(&rec, &replay); err != nil {
		_ = br.Close()
		conn.Release()
		n.markDown()
		return nil, nil, false, 0, err
	}
	n.noteReplay(uint64(replay))
	return conn, br, rec, uint64(replay), nil
}

// waitReplay polls the standbys' replay positions until one that is up
// has replayed min (true) or deadline passes (false).
func (r *Router) waitReplay(ctx context.Context, min uint64, deadline time.Time) bool {
	pause := time.Millisecond
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return false
		}
		t := time.NewTimer(minDur(pause, wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		pause = minDur(2*pause, 20*time.Millisecond)
		for _, n := range r.candidates() {
			pctx, cancel := context.WithDeadline(ctx, deadline)
			var (
				rec    bool
				replay int64
			)
			err := n.Pool.QueryRow(pctx, stmtReplay).Scan(&rec, &replay)
			cancel()
			if err == nil && rec && uint64(replay) >= min && r.lagOf(uint64(replay)) <= r.opts.MaxLag {
				n.noteReplay(uint64(replay))
				return true
			}
		}
	}
}

func minDur(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

// Standbys reports each standby's state, for metrics and tests.
func (r *Router) Standbys() []State {
	out := make([]State, len(r.nodes))
	for i, n := range r.nodes {
		n.mu.Lock()
		out[i] = State{Name: n.Name, Up: n.up, Known: n.known, Replay: n.replay, Lag: n.lag, BehindBytes: n.behind}
		n.mu.Unlock()
	}
	return out
}

// State is a standby's state as last probed.
type State struct {
	Name        string
	Up          bool
	Known       bool
	Replay      uint64
	Lag         time.Duration
	BehindBytes uint64
}

// Served counts the reads a context allowed on a standby, by who served
// them and why: served_by standby / reason ok, or served_by primary with
// reason no_standby, lagging, token_wait or error.
func (r *Router) Served(f func(servedBy, reason string, n uint64)) {
	for i := range numOutcomes {
		f(outcomeNames[i][0], outcomeNames[i][1], r.served[i].Load())
	}
}
