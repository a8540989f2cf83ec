package crud

import (
	"strings"
	"testing"

	"github.com/userd/userd/db/ceilings"
)

// TestRenderTable: the Health/Check floor has a row of its own and
// GetUser's target is its ratio to it; an operation whose ceiling has a
// _nofeed variant shows it in the "without feed" column, one without
// leaves it blank; the previous release's regressions beyond 5% are
// named.
func TestRenderTable(t *testing.T) {
	res := func(rps float64) []result { return []result{{rps: rps, p50: 1, p99: 2, cpuPerCall: 50, rssMiB: 30}} }
	cur := &target{name: "userd", results: map[string][]result{
		healthFloor: res(10000), grpcGetUser: res(6500), grpcDeduct: res(3000), grpcOrgDeduct: res(2400), "gRPC GrantCredits": res(2000), halfPeak: res(3250),
	}}
	prev := &target{name: "previous (abc1234)", results: map[string][]result{
		healthFloor: res(10000), grpcGetUser: res(6000), grpcDeduct: res(3500), "gRPC GrantCredits": res(2000), halfPeak: res(3000),
	}}
	ceil := func(name string, tps float64) *ceiling {
		return &ceiling{Script: ceilings.Script{Name: name, Text: "SELECT 1;\n"}, tps: []float64{tps}}
	}
	out := render([]*target{cur, prev}, []*ceiling{
		ceil("get_user", 20000), ceil("deduct", 4000), ceil("deduct_nofeed", 5000), ceil("grant", 2500),
	})
	rowOf := func(op string) []string {
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "| "+op+" |") {
				return strings.Split(line, " | ")
			}
		}
		t.Fatalf("no row %q in\n%s", op, out)
		return nil
	}
	// Columns: operation, rate, p50, p99, errors, CPU, client CPU, RSS,
	// ceiling with feed, ceiling without feed, ratio, then the previous'.
	if r := rowOf(grpcDeduct); r[8] != "4000 (deduct)" || r[9] != "5000 (deduct_nofeed)" || r[10] != "0.75" {
		t.Errorf("deduct row: ceilings %q, %q, ratio %q; want 4000 (deduct), 5000 (deduct_nofeed), 0.75", r[8], r[9], r[10])
	}
	if r := rowOf("gRPC GrantCredits"); r[8] != "2500 (grant)" || r[9] != "" {
		t.Errorf("grant row: ceilings %q, %q; want 2500 (grant) and a blank without-feed column", r[8], r[9])
	}
	if r := rowOf(healthFloor); r[1] != "10000" {
		t.Errorf("floor row rate %q, want 10000", r[1])
	}
	for _, want := range []string{
		"| gRPC GetUser ≥ 0.6 of the Health/Check floor (same userd, same client, same round) | 0.65 | met |",
		"| no operation below previous (abc1234) by more than 5% | gRPC DeductCredits 0.86× | **not met** |",
		"| userd RSS < 100 MiB | 30 MiB peak | met |",
		"| gRPC DeductCredits ≥ 0.6 of its best SQL with the feed (deduct) | 0.75 | met |",
		"| organization deduct (membership and cap checks) ≥ 0.8 of the personal deduct | 0.80 | met |",
		"| webhook user.created ≥ 0.8 of its best SQL with the feed (webhook_create) | not measured | |",
		"| p99 at half the peak rate (gRPC GetUser) < 10 ms | 2.00 ms | met |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

// TestRenderTableFailedBaseline: a scenario every call of which failed on
// the previous release reads n/a there, not a rate of errors, and counts
// neither as a regression nor as a speed-up.
func TestRenderTableFailedBaseline(t *testing.T) {
	ok := []result{{rps: 1500, p50: 1, p99: 2, cpuPerCall: 50, rssMiB: 30}}
	failed := []result{{rps: 4_000_000, errs: 12_000_000, failed: true}}
	cur := &target{name: "userd", results: map[string][]result{grpcOrgDeduct: ok}}
	prev := &target{name: "previous (abc1234)", results: map[string][]result{grpcOrgDeduct: failed}}
	out := render([]*target{cur, prev}, nil)
	if !strings.Contains(out, "| "+grpcOrgDeduct+" | 1500 |") || !strings.Contains(out, "n/a (every call failed: 12000000 errors)") {
		t.Errorf("organization row not n/a on the previous release:\n%s", out)
	}
	if strings.Contains(out, "4000000") || strings.Contains(out, "no operation below") {
		t.Errorf("the failed baseline counts as a rate:\n%s", out)
	}
	if !strings.Contains(out, "| p99 at half the peak rate (gRPC GetUser) < 10 ms | not measured | |") {
		t.Errorf("a half-peak run that did not run reads as measured:\n%s", out)
	}
}
