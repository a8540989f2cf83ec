package standby_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/userd/userd/internal/consistency"
	"github.com/userd/userd/internal/standby"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

// BenchmarkWriteToken measures what a write's consistency token costs: a
// deduction through the store with standby reads on, without a Recorder
// (the write as before: one statement) and with one (BEGIN; the
// statement; COMMIT; the insert position — still one round trip),
// with synchronous_commit off so that the commit's flush does not hide
// the difference.
func BenchmarkWriteToken(b *testing.B) {
	ctx := context.Background()
	// Without waiting for the commit's flush, which would swamp the
	// difference on a loaded machine (and is the same with or without).
	pool := testdb.Connect(b, testdb.URL(b)+"&synchronous_commit=off")
	st := store.New(pool, store.Options{Standbys: standby.New(pool, nil, standby.Options{})})
	svc := users.NewService(st, users.Options{InitialCredits: users.MaxAmount})
	const n = 100
	for i := range n {
		if _, _, err := svc.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: fmt.Sprintf("user_t%d", i)}); err != nil {
			b.Fatal(err)
		}
	}
	var seq atomic.Int64
	deduct := func(ctx context.Context, i int) error {
		_, err := svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: "user_t" + strconv.Itoa(i%n), Amount: 1,
			IdempotencyKey: "k" + strconv.FormatInt(seq.Add(1), 10)})
		return err
	}
	// Alternated call by call, so that both see the same load; medians,
	// so that the other builds on a shared machine weigh little.
	var plain, token []time.Duration
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		if err := deduct(ctx, i); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		rctx, rec := consistency.WithRecorder(ctx)
		if err := deduct(rctx, i); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, ok := rec.Token(); !ok {
			b.Fatal("no token")
		}
		plain, token = append(plain, t1.Sub(t0)), append(token, t2.Sub(t1))
	}
	mp, mt := median(plain), median(token)
	b.ReportMetric(float64(mp.Microseconds()), "µs-median-plain")
	b.ReportMetric(float64(mt.Microseconds()), "µs-median-token")
	b.ReportMetric(float64((mt - mp).Microseconds()), "µs-token-extra")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
