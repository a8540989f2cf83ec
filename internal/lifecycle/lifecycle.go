// Package lifecycle runs userd's background work — the change feed's
// poller, pruning, the periodic Clerk sync, the database monitor, the
// webhook batches, and the jobs to come — under one start/stop discipline:
// a Group starts its services in order and stops them in reverse order,
// waiting for each to end, within a bound. internal/app stops the group
// after the servers have drained (and cut what the grace period left) and
// before it closes the database pool, so that no background task ever runs
// against a closed pool.
//
// The shape follows the maintenance services of a job queue such as River
// (a service is started, asked to stop and waited for), without the
// ceremony: userd's services are few and fixed at wiring time.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Service is a piece of background work.
type Service interface {
	// Start starts the work and returns once it is under way (it does not
	// wait for the work to end). The work may use ctx's values; it ends
	// when ctx is cancelled or Stop is called, whichever comes first.
	Start(ctx context.Context) error
	// Stop asks the work to end and waits until it has: nothing of it runs
	// any more when Stop returns nil. If ctx ends first, Stop returns its
	// error (the work has been told to end but may still be running).
	Stop(ctx context.Context) error
}

// Group starts services in the order they were added and stops them in
// the reverse order, so that a service may rely on those added before it.
// The zero value is not usable; call NewGroup.
type Group struct {
	log *slog.Logger

	mu      sync.Mutex
	members []*member
	started bool
}

type member struct {
	name    string
	svc     Service
	running bool // guarded by Group.mu
}

// NewGroup returns an empty group that logs to log.
func NewGroup(log *slog.Logger) *Group {
	return &Group{log: log}
}

// Add appends a service. Services are added at wiring time, before Start.
func (g *Group) Add(name string, svc Service) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.started {
		panic("lifecycle: Add after Start: " + name)
	}
	g.members = append(g.members, &member{name: name, svc: svc})
}

// Start starts every service in order. If one fails, those already started
// are stopped (in reverse order, bounded by ctx) and its error is returned.
func (g *Group) Start(ctx context.Context) error {
	g.mu.Lock()
	if g.started {
		g.mu.Unlock()
		return errors.New("lifecycle: group started twice")
	}
	g.started = true
	members := g.members
	g.mu.Unlock()
	for _, m := range members {
		if err := m.svc.Start(ctx); err != nil {
			err = fmt.Errorf("start %s: %w", m.name, err)
			return errors.Join(err, g.Stop(ctx))
		}
		g.mu.Lock()
		m.running = true
		g.mu.Unlock()
	}
	return nil
}

// Stop stops every running service, last started first, and waits for
// each. When ctx ends first, the remaining services are still told to stop
// (their Stop returns at once) and the error names every service that may
// still be running. Stop is safe to call more than once.
func (g *Group) Stop(ctx context.Context) error {
	g.mu.Lock()
	members := g.members
	g.mu.Unlock()
	var errs []error
	for i := len(members) - 1; i >= 0; i-- {
		m := members[i]
		g.mu.Lock()
		running := m.running
		g.mu.Unlock()
		if !running {
			continue
		}
		start := time.Now()
		if err := m.svc.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", m.name, err))
			g.log.Error("background task did not stop", "task", m.name, "err", err)
			continue
		}
		g.mu.Lock()
		m.running = false
		g.mu.Unlock()
		g.log.Debug("background task stopped", "task", m.name, "took", time.Since(start).Round(time.Millisecond).String())
	}
	return errors.Join(errs...)
}

// Running returns the names of the services started and not (yet) known
// to have stopped, in start order.
func (g *Group) Running() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var names []string
	for _, m := range g.members {
		if m.running {
			names = append(names, m.name)
		}
	}
	return names
}

// Loop is a Service that runs run on a goroutine of its own until run
// returns; Stop cancels run's context and waits for it to return. run must
// return promptly once its context is cancelled.
func Loop(run func(ctx context.Context)) Service {
	return &loop{run: run}
}

type loop struct {
	run func(context.Context)

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned; nil before Start
}

func (l *loop) Start(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done != nil {
		return errors.New("already started")
	}
	ctx, l.cancel = context.WithCancel(ctx)
	l.done = make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		l.run(ctx)
	}(l.done)
	return nil
}

func (l *loop) Stop(ctx context.Context) error {
	l.mu.Lock()
	cancel, done := l.cancel, l.done
	l.mu.Unlock()
	if done == nil {
		return nil // never started
	}
	cancel()
	select {
	case <-done:
		return nil
	default:
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("still running: %w", ctx.Err())
	}
}

// Every is a Loop that calls job at once and then every interval (measured
// from one call's start to the next's; a call that overruns delays the
// next, never overlaps it) until stopped. job gets the loop's context and
// must return promptly once it is cancelled; it reports its own errors.
func Every(interval time.Duration, job func(ctx context.Context)) Service {
	return Loop(func(ctx context.Context) {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			job(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// OnStop is a Service with nothing to start whose Stop is stop: for work
// that other code starts on demand (such as batches that requests start)
// and that must be ended, and waited for, with the rest.
func OnStop(stop func(ctx context.Context) error) Service {
	return onStop(stop)
}

type onStop func(context.Context) error

func (onStop) Start(context.Context) error      { return nil }
func (s onStop) Stop(ctx context.Context) error { return s(ctx) }
