package main

import (
	"runtime/debug"
	"testing"
)

// TestServeGC: userd serve sets its own collector target when GOGC is not
// set, and leaves the runtime's (from GOGC) when it is.
func TestServeGC(t *testing.T) {
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })

	unset := func(string) (string, bool) { return "", false }
	if got := applyServeGC(unset); got != serveGCPercent {
		t.Errorf("GOGC unset: applyServeGC = %d, want %d", got, serveGCPercent)
	}
	if now := debug.SetGCPercent(100); now != serveGCPercent {
		t.Errorf("GOGC unset: the collector's target is %d, want %d", now, serveGCPercent)
	}

	// With GOGC=150 the runtime started at 150: applyServeGC keeps it.
	debug.SetGCPercent(150)
	set := func(k string) (string, bool) { return "150", k == "GOGC" }
	if got := applyServeGC(set); got != 150 {
		t.Errorf("GOGC=150: applyServeGC = %d, want 150", got)
	}
	if now := debug.SetGCPercent(100); now != 150 {
		t.Errorf("GOGC=150: the collector's target is %d, want 150 (left alone)", now)
	}
}
