package lifecycle_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/lifecycle"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// journal records what the services of a test did, in order.
type journal struct {
	mu      sync.Mutex
	entries []string
}

func (j *journal) add(s string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, s)
}

func (j *journal) get() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.entries)
}

// recorder is a service that journals its start and the end of its work.
func recorder(j *journal, name string) lifecycle.Service {
	return lifecycle.Loop(func(ctx context.Context) {
		<-ctx.Done()
		j.add("ended " + name)
	})
}

type failing struct{}

func (failing) Start(context.Context) error { return errors.New("no") }
func (failing) Stop(context.Context) error  { return nil }

// TestGroupStopsInReverseOrderAndWaits: each service's work has ended
// before the next one is told to stop, last started first.
func TestGroupStopsInReverseOrderAndWaits(t *testing.T) {
	var j journal
	g := lifecycle.NewGroup(discard)
	for _, name := range []string{"a", "b", "c"} {
		g.Add(name, recorder(&j, name))
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := g.Running(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("running %v", got)
	}
	if err := g.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := j.get(), []string{"ended c", "ended b", "ended a"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := g.Running(); len(got) != 0 {
		t.Errorf("still running after Stop: %v", got)
	}
	if err := g.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestGroupStartFailureStopsTheStarted: a service that cannot start stops
// those started before it, and nothing after it starts.
func TestGroupStartFailureStopsTheStarted(t *testing.T) {
	var j journal
	g := lifecycle.NewGroup(discard)
	g.Add("a", recorder(&j, "a"))
	g.Add("broken", failing{})
	started := false
	g.Add("c", lifecycle.Loop(func(context.Context) { started = true }))
	err := g.Start(context.Background())
	if err == nil || err.Error() != "start broken: no" {
		t.Fatalf("Start: %v", err)
	}
	if got := j.get(); !slices.Equal(got, []string{"ended a"}) {
		t.Errorf("journal %v", got)
	}
	if started || len(g.Running()) != 0 {
		t.Errorf("started after the failure: %v, running %v", started, g.Running())
	}
}

// TestGroupStopIsBounded: a service that does not stop is named, the
// others are still stopped, and Stop returns when its context ends.
func TestGroupStopIsBounded(t *testing.T) {
	var j journal
	release := make(chan struct{})
	stuck := make(chan struct{})
	g := lifecycle.NewGroup(discard)
	g.Add("a", recorder(&j, "a"))
	g.Add("stuck", lifecycle.Loop(func(context.Context) {
		defer close(stuck)
		<-release // ignores its context
	}))
	g.Add("c", recorder(&j, "c"))
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the bound is already over: nothing may be waited for
	err := g.Stop(ctx)
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("Stop: %v", err)
	}
	if got := g.Running(); !slices.Contains(got, "stuck") {
		t.Errorf("running %v, want stuck among them", got)
	}
	close(release)
	<-stuck
	// Every service was told to stop, even past the bound.
	if err := g.Stop(context.Background()); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	got := j.get()
	slices.Sort(got)
	if !slices.Equal(got, []string{"ended a", "ended c"}) {
		t.Errorf("journal %v", got)
	}
}

// TestEveryRunsAtOnceAndStops: the job runs at start (not an interval
// later) and never again once stopped.
func TestEveryRunsAtOnceAndStops(t *testing.T) {
	calls := make(chan struct{}, 10)
	svc := lifecycle.Every(time.Hour, func(context.Context) { calls <- struct{}{} })
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-calls
	if err := svc.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 0 {
		t.Errorf("%d more calls", len(calls))
	}
	if err := svc.Start(context.Background()); err == nil {
		t.Error("a loop started twice")
	}
}

// TestLoopEndsWithItsContext: the work also ends with Start's context, and
// Stop then returns at once.
func TestLoopEndsWithItsContext(t *testing.T) {
	ended := make(chan struct{})
	svc := lifecycle.Loop(func(ctx context.Context) {
		<-ctx.Done()
		close(ended)
	})
	ctx, cancel := context.WithCancel(context.Background())
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-ended
	if err := svc.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestOnStop: a service with nothing to start runs its stop once asked.
func TestOnStop(t *testing.T) {
	stopped := 0
	g := lifecycle.NewGroup(discard)
	g.Add("x", lifecycle.OnStop(func(context.Context) error { stopped++; return nil }))
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if stopped != 0 {
		t.Fatal("stopped at start")
	}
	if err := g.Stop(context.Background()); err != nil || stopped != 1 {
		t.Fatalf("Stop: %v, stopped %d times", err, stopped)
	}
}
