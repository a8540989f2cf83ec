package crud

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"time"
)

// render writes the report: one row per operation (medians of the
// rounds), the targets of issue 10, and the statements of the ceilings.
func render(targets []*target, ceils []*ceiling) string {
	var b strings.Builder
	cur, prev := targets[0], (*target)(nil)
	if len(targets) > 1 {
		prev = targets[1]
	}
	ceiling := map[string]float64{}
	for _, c := range ceils {
		ceiling[c.Name] = median(c.tps)
	}
	renderHeader(&b, prev)
	maxRSS := renderTable(&b, cur, prev, ceiling)
	renderTargets(&b, cur, prev, ceiling, maxRSS)
	renderCeilings(&b, ceils, ceiling)
	return b.String()
}

func renderHeader(b *strings.Builder, prev *target) {
	cpuModel := "unknown CPU"
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if m := regexp.MustCompile(`model name\s*:\s*(.+)`).FindSubmatch(info); m != nil {
			cpuModel = string(m[1])
		}
	}
	pgv, _ := exec.Command("pgbench", "--version").Output()
	fmt.Fprintf(b, "# userd benchmarks\n\n")
	fmt.Fprintf(b, "Produced by `make bench` (cmd/userd-bench) on %s: %d cores (%s), %s, %s, PostgreSQL %s on the same machine. "+
		"Every figure is the median of %d rounds of %s at %d concurrent clients (after %s of warm-up); the load generator, userd and PostgreSQL share the cores, "+
		"as pgbench and PostgreSQL do for the ceilings. The machine is shared and noisy: read the ratios, not the absolute rates.\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), cpuModel, runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH,
		strings.TrimSpace(strings.TrimPrefix(string(pgv), "pgbench (PostgreSQL)")), *rounds, *duration, *concurrency, *warmup)
	fmt.Fprintf(b, "Each ceiling is the best SQL a hand-tuned implementation would send for the operation's semantics "+
		"(one statement; the scripts are in db/ceilings and [below](#ceilings)), run by pgbench with prepared statements "+
		"at the same concurrency on the same seeded database; a write's ceiling writes the change-feed event(s) userd writes, "+
		"and its variant without them (db/ceilings/<name>_nofeed.sql, where there is one) shows what the feed costs. "+
		"The Health/Check row is the floor of a gRPC call on the same userd, through the same client and interceptor chain "+
		"(no authentication, no database read), measured right before GetUser. CPU µs/call is userd's CPU time over the measured "+
		"seconds divided by the calls completed in them; client CPU µs/call the same for the load generator, which shares the cores.")
	if prev != nil {
		fmt.Fprintf(b, " **%s** is the previous release (`make bench` builds it from BASELINE, by default PREVIOUS_RELEASE: see the Makefile), measured in the same rounds "+
			"on a database of its own; × is the new rate over its rate.", prev.name)
	}
	b.WriteString("\n\n")
}

// renderTable writes the operations table and returns the largest RSS
// of the binary under test.
func renderTable(b *strings.Builder, cur, prev *target, ceiling map[string]float64) float64 {
	b.WriteString("| operation | rate /s | p50 ms | p99 ms | errors | CPU µs/call | client CPU µs/call | peak RSS MiB | ceiling tps with feed (best SQL) | ceiling tps without feed | ratio |")
	sep := "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
	if prev != nil {
		fmt.Fprintf(b, " %[1]s rate /s | %[1]s CPU µs/call | %[1]s ratio | × %[1]s |", prev.name)
		sep += " ---: | ---: | ---: | ---: |"
	}
	b.WriteString("\n" + sep + "\n")
	maxRSS := 0.0
	rows := append(append([]scenario(nil), scenarios...), scenario{name: halfPeak})
	for _, s := range rows {
		rs := cur.results[s.name]
		if len(rs) == 0 {
			continue // not run (-run)
		}
		rps := median(rates(rs))
		rss := field(rs, func(r result) float64 { return r.rssMiB })
		maxRSS = max(maxRSS, rss)
		ceil, nofeed, ratio := "", "", ""
		if tps := ceiling[s.ceiling]; tps > 0 {
			ceil = fmt.Sprintf("%.0f (%s)", tps, s.ceiling)
			ratio = fmt.Sprintf("%.2f", rps/tps)
		}
		if tps := ceiling[NoFeed(s.ceiling)]; s.ceiling != "" && tps > 0 {
			nofeed = fmt.Sprintf("%.0f (%s)", tps, NoFeed(s.ceiling))
		}
		if s.name == healthFloor {
			ceil = "(the floor of a gRPC call)"
		}
		fmt.Fprintf(b, "| %s | %.0f | %.2f | %.2f | %d | %.0f | %.0f | %.0f | %s | %s | %s |", s.name, rps,
			field(rs, func(r result) float64 { return r.p50 }), field(rs, func(r result) float64 { return r.p99 }),
			errorCount(rs), field(rs, func(r result) float64 { return r.cpuPerCall }),
			field(rs, func(r result) float64 { return r.clientPerCall }), rss, ceil, nofeed, ratio)
		if prev != nil {
			ps := prev.results[s.name]
			if allFailed(ps) {
				fmt.Fprintf(b, " n/a (every call failed: %d errors) | | | |\n", errorCount(ps))
				continue
			}
			prps := median(rates(ps))
			pratio, speedup := "", ""
			if tps := ceiling[s.ceiling]; tps > 0 {
				pratio = fmt.Sprintf("%.2f", prps/tps)
			}
			if prps > 0 && s.name != halfPeak {
				speedup = fmt.Sprintf("%.2f", rps/prps)
			}
			errNote := ""
			if n := errorCount(ps); n > 0 {
				errNote = fmt.Sprintf(" (%d errors)", n)
			}
			fmt.Fprintf(b, " %.0f%s | %.0f | %s | %s |", prps, errNote, field(ps, func(r result) float64 { return r.cpuPerCall }), pratio, speedup)
		}
		b.WriteString("\n")
	}
	return maxRSS
}

func errorCount(rs []result) int64 {
	var n int64
	for _, r := range rs {
		n += r.errs
	}
	return n
}

// renderTargets checks the targets the open performance work is held to:
// the write paths against their best SQL with the change feed, GetUser
// against the gRPC floor of the same server, the organization deduct
// against the personal one, no regression against the previous release,
// memory and tail latency; and, as sanity checks, REST against gRPC.
// Absolute rates are not targets: on a shared machine only ratios measured
// in the same run mean anything.
func renderTargets(b *strings.Builder, cur, prev *target, ceiling map[string]float64, maxRSS float64) {
	rate := func(t *target, name string) float64 { return median(rates(t.results[name])) }
	check := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	ratioRow := func(what string, num, den, want float64) {
		if num == 0 || den == 0 {
			fmt.Fprintf(b, "| %s | not measured | |\n", what)
			return
		}
		fmt.Fprintf(b, "| %s | %.2f | %s |\n", what, num/den, check(num/den >= want))
	}
	get := rate(cur, grpcGetUser)
	halfP99 := field(cur.results[halfPeak], func(r result) float64 { return r.p99 })

	b.WriteString("\n| target | measured | |\n| --- | --- | --- |\n")
	ratioRow("gRPC DeductCredits ≥ 0.6 of its best SQL with the feed (deduct)", rate(cur, grpcDeduct), ceiling["deduct"], .6)
	ratioRow("webhook user.created ≥ 0.8 of its best SQL with the feed (webhook_create)", rate(cur, webhookCreated), ceiling["webhook_create"], .8)
	ratioRow("gRPC GetUser ≥ 0.6 of the Health/Check floor (same userd, same client, same round)", get, rate(cur, healthFloor), .6)
	ratioRow("organization deduct (membership and cap checks) ≥ 0.8 of the personal deduct", rate(cur, grpcOrgDeduct), rate(cur, grpcDeduct), .8)
	if prev != nil {
		renderNoRegression(b, cur, prev, check)
	}
	if len(cur.results[halfPeak]) == 0 {
		b.WriteString("| p99 at half the peak rate (gRPC GetUser) < 10 ms | not measured | |\n")
	} else {
		fmt.Fprintf(b, "| p99 at half the peak rate (gRPC GetUser) < 10 ms | %.2f ms | %s |\n", halfP99, check(halfP99 < 10))
	}
	fmt.Fprintf(b, "| userd RSS < 100 MiB | %.0f MiB peak | %s |\n", maxRSS, check(maxRSS < 100))
	ratioRow("REST DeductCredits ≥ 0.8 of gRPC DeductCredits", rate(cur, restDeduct), rate(cur, grpcDeduct), .8)
	ratioRow("REST GetUser ≥ 0.6 of gRPC GetUser", rate(cur, restGetUser), get, .6)
}

// renderNoRegression checks that no operation is slower than on the
// previous binary by more than 5% (the floor included: it is userd's own
// cost too).
func renderNoRegression(b *strings.Builder, cur, prev *target, check func(bool) string) {
	var below []string
	measured := 0
	for _, s := range scenarios {
		now, was := median(rates(cur.results[s.name])), median(rates(prev.results[s.name]))
		if now == 0 || was == 0 {
			continue
		}
		measured++
		if now < .95*was {
			below = append(below, fmt.Sprintf("%s %.2f×", s.name, now/was))
		}
	}
	if measured == 0 {
		return
	}
	what := "none"
	if len(below) > 0 {
		what = strings.Join(below, ", ")
	}
	fmt.Fprintf(b, "| no operation below %s by more than 5%% | %s | %s |\n", prev.name, what, check(len(below) == 0))
}

// renderCeilings shows what each ceiling runs: the whole script.
func renderCeilings(b *strings.Builder, ceils []*ceiling, ceiling map[string]float64) {
	fmt.Fprintf(b, "\n## Ceilings\n\nEach runs as `pgbench -n -M prepared -c %d -j %d -T %d -D users=%d -f db/ceilings/<name>.sql`; "+
		"`go test ./db/ceilings` runs every statement once on a freshly migrated database, so a ceiling cannot drift from the schema.\n",
		*concurrency, runtime.NumCPU(), int(duration.Seconds()), *nUsers)
	for _, c := range ceils {
		if len(c.tps) == 0 {
			continue // not run (-run)
		}
		fmt.Fprintf(b, "\n### %s: %.0f tps\n\n```sql\n%s```\n", c.Name, ceiling[c.Name], c.Text)
	}
}
