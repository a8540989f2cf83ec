package crud

import (
	"context"
	"fmt"
	"log"

	"github.com/jackc/pgx/v5"

	userdv1 "github.com/userd/userd/gen/userd/v1"
)

// DeductCredits on accounts holding live expiring grants (issue 21): 1 and
// 50 grants per account, each deduction taking 1 credit from the grant
// that expires soonest. A binary without expiring grants (the baseline of
// a release before them) gets the same credits as a grant that never
// expires: its ordinary deduction is what the new path is compared with.
// Registered here, in this file, so that the scenario list stays put.
func init() {
	for _, n := range []int{1, 50} {
		scenarios = append(scenarios, scenario{
			name:    fmt.Sprintf("gRPC DeductCredits (%d grants)", n),
			op:      func(in *instance, i int) error { return in.deductGranted(n, i) },
			prepare: func(t *target) { t.seedGrants(n) },
		})
	}
}

// grantUsers is how many accounts of each grant count take the load.
const grantUsers = 100

func grantUserID(grants, i int) string { return fmt.Sprintf("user_grants%d_%d", grants, i) }

func (in *instance) deductGranted(grants, i int) error {
	_, err := in.grpc.DeductCredits(in.ctx, &userdv1.DeductCreditsRequest{
		ClerkUserId: grantUserID(grants, i%grantUsers), Amount: 1, IdempotencyKey: in.key("x"),
	})
	return err
}

// seedGrants creates the accounts with their grants once per database
// (before the target's userd starts), in SQL: 10 initial credits, then
// grants of 10,000,000 credits expiring 1 to n days ahead, so every grant
// stays live for the whole run.
func (t *target) seedGrants(n int) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, t.dbURL)
	if err != nil {
		log.Fatalf("%s: seed grants: %v", t.name, err)
	}
	defer conn.Close(ctx)
	var expiring bool
	if err := conn.QueryRow(ctx, `SELECT to_regproc('userd_grant_expiring') IS NOT NULL`).Scan(&expiring); err != nil {
		log.Fatalf("%s: seed grants: %v", t.name, err)
	}
	for u := range grantUsers {
		id := grantUserID(n, u)
		var created bool
		if err := conn.QueryRow(ctx, `SELECT u_id IS NOT NULL FROM userd_create_user($1, NULL, NULL, NULL, NULL, NULL, 10)`, id).Scan(&created); err != nil {
			log.Fatalf("%s: seed grants: %v", t.name, err)
		}
		if !created {
			continue // seeded by an earlier round
		}
		for g := range n {
			key := fmt.Sprintf("seed%d", g)
			if expiring {
				_, err = conn.Exec(ctx, `SELECT userd_grant_expiring($1, '', 'bench', 10000000, 'seed', $2, 'GRANT',
					now() + make_interval(days => $3), now())`, id, key, g+1)
			} else {
				_, err = conn.Exec(ctx, `SELECT userd_personal_change_credits($1, 'bench', 'GRANT', 10000000, 'seed', $2)`, id, key)
			}
			if err != nil {
				log.Fatalf("%s: seed grants: %v", t.name, err)
			}
		}
	}
}
