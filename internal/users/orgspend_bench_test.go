package users_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/userd/userd/internal/users"
)

// BenchmarkOrgDeduct compares a deduction from an organization's account
// (the live membership, a required permission and the member's cap
// checked under the account's lock, the cap's counter moved) with one from
// a personal account, in the same run, on the same database: n spenders,
// each with its own personal account and its own organization (so that
// neither path waits on another spender's row lock), 16 goroutines per
// GOMAXPROCS, over a pool of 40 connections.
// The database's clock counts the caps, as in production. Compare the
// ns/op of Org/* with Personal/*:
//
//	go test -run '^$' -bench BenchmarkOrgDeduct -benchtime 3000x -count 5 ./internal/users/
func BenchmarkOrgDeduct(b *testing.B) {
	ctx := context.Background()
	e := newOrgEnv(b, nil, 40)
	const (
		n    = 200
		perm = "org:credits:spend"
	)
	for i := range n {
		id := "user_p" + strconv.Itoa(i)
		org := "org_p" + strconv.Itoa(i)
		e.newOrg(b, org, users.MaxAmount, member{clerkUserID: id, permissions: []string{"org:other", perm}})
		if _, err := e.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: id, Amount: users.MaxAmount, IdempotencyKey: "seed"}); err != nil {
			b.Fatal(err)
		}
		if _, err := e.svc.SetMemberSpendingCap(ctx, users.SetMemberCapInput{ClerkOrgID: org, MemberClerkUserID: id,
			Period: users.CapPeriodMonth, Cap: users.MaxAmount, ChangedBy: "user_admin"}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := e.svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: 1, ChangedBy: "service:bench"}); err != nil {
		b.Fatal(err)
	}
	var seq atomic.Int64
	cases := []struct {
		name   string
		change func(i int64) users.CreditChange
	}{
		{"Personal/Amount", func(i int64) users.CreditChange {
			return users.CreditChange{ClerkUserID: "user_p" + strconv.FormatInt(i%n, 10), Amount: 1, IdempotencyKey: "k" + strconv.FormatInt(i, 10)}
		}},
		{"Org/Amount", func(i int64) users.CreditChange {
			s := strconv.FormatInt(i%n, 10)
			return users.CreditChange{ClerkOrgID: "org_p" + s, ClerkUserID: "user_p" + s, RequiredPermission: perm,
				Amount: 1, IdempotencyKey: "k" + strconv.FormatInt(i, 10)}
		}},
		{"Personal/Action", func(i int64) users.CreditChange {
			return users.CreditChange{ClerkUserID: "user_p" + strconv.FormatInt(i%n, 10), Action: "render", IdempotencyKey: "k" + strconv.FormatInt(i, 10)}
		}},
		{"Org/Action", func(i int64) users.CreditChange {
			s := strconv.FormatInt(i%n, 10)
			return users.CreditChange{ClerkOrgID: "org_p" + s, ClerkUserID: "user_p" + s, RequiredPermission: perm,
				Action: "render", IdempotencyKey: "k" + strconv.FormatInt(i, 10)}
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.SetParallelism(16)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := e.svc.DeductCredits(ctx, c.change(seq.Add(1))); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
