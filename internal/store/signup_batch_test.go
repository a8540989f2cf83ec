package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/testdb"
)

// hookEvent is one element of userd_apply_clerk_batch's p_events (the
// shape internal/store/orgs.go sends).
type hookEvent struct {
	SvixID    string `json:"svix_id"`
	Type      string `json:"type"`
	Kind      string `json:"kind"`
	Deleted   bool   `json:"deleted"`
	ID        string `json:"id"`
	UpdatedAt int64  `json:"updated_at"`
	Email     string `json:"email,omitempty"`
	FirstName string `json:"first_name,omitempty"`
	LastName  string `json:"last_name,omitempty"`
	ImageURL  string `json:"image_url,omitempty"`
	Name      string `json:"name,omitempty"`
}

func signUp(msg, id, email string, updatedAt int64) hookEvent {
	return hookEvent{SvixID: msg, Type: "user.created", Kind: "user", ID: id, Email: email, UpdatedAt: updatedAt,
		FirstName: "F" + id, ImageURL: "https://img.example/" + id}
}

// TestSignUpBatch: userd_apply_clerk_batch writes a batch made only of
// sign-ups of unseen users in one subtransaction (00034), and any other
// batch event by event. Either way the batch leaves exactly what applying
// its events one at a time through the general path
// (userd_apply_clerk_user and its siblings, each in a savepoint, as the
// batch's loop does) leaves on a second database with the same history:
// the same outcomes, users, accounts, ledger, events in each stream's
// order and webhook_events rows. Whether the fast path ran is read from
// the xmin of the batch's webhook_events rows: one subtransaction wrote
// them all, or one each.
func TestSignUpBatch(t *testing.T) {
	t.Parallel()
	held := signUp("msg_held", "user_held", "taken@example.com", 5)
	cases := []struct {
		name      string
		before    []hookEvent // applied first on both databases, one batch each
		batch     []hookEvent
		allowance bool // the catalog gives FREE an allowance
		fast      bool
	}{
		{name: "sign-ups", batch: []hookEvent{
			signUp("msg_1", "user_1", "one@example.com", 1), signUp("msg_2", "user_2", "", 1),
			{SvixID: "msg_3", Type: "user.updated", Kind: "user", ID: "user_3", UpdatedAt: 2},
		}, fast: true},
		{name: "sign-ups with a FREE allowance", allowance: true, batch: []hookEvent{
			signUp("msg_1", "user_1", "one@example.com", 1), signUp("msg_2", "user_2", "two@example.com", 1),
		}, fast: true},
		{name: "a tombstone's email is free", before: []hookEvent{
			held, {SvixID: "msg_held_gone", Type: "user.deleted", Kind: "user", ID: "user_held", Deleted: true},
		}, batch: []hookEvent{
			signUp("msg_1", "user_1", "TAKEN@example.com", 9), signUp("msg_2", "user_2", "two@example.com", 1),
		}, fast: true},
		{name: "a redelivered Svix id", before: []hookEvent{held}, batch: []hookEvent{
			signUp("msg_1", "user_1", "one@example.com", 1), signUp("msg_held", "user_held", "taken@example.com", 5),
		}},
		{name: "one Svix id twice in the batch", batch: []hookEvent{
			signUp("msg_1", "user_1", "one@example.com", 1), signUp("msg_1", "user_1", "one@example.com", 1),
		}},
		{name: "an update of a user seen before", before: []hookEvent{held}, batch: []hookEvent{
			signUp("msg_1", "user_1", "one@example.com", 1),
			{SvixID: "msg_upd", Type: "user.updated", Kind: "user", ID: "user_held", Email: "taken@example.com", FirstName: "New", UpdatedAt: 6},
		}},
		{name: "one user twice in the batch", batch: []hookEvent{
			signUp("msg_1", "user_1", "one@example.com", 1),
			{SvixID: "msg_1b", Type: "user.updated", Kind: "user", ID: "user_1", Email: "one@example.com", LastName: "L", UpdatedAt: 2},
		}},
		{name: "an email a live user holds, newer", before: []hookEvent{held}, batch: []hookEvent{
			signUp("msg_1", "user_1", "Taken@Example.com", 9), signUp("msg_2", "user_2", "two@example.com", 1),
		}},
		{name: "an email a live user holds, older", before: []hookEvent{held}, batch: []hookEvent{
			signUp("msg_1", "user_1", "taken@example.com", 2), signUp("msg_2", "user_2", "two@example.com", 1),
		}},
		{name: "one email twice in the batch", batch: []hookEvent{
			signUp("msg_1", "user_1", "same@example.com", 1), signUp("msg_2", "user_2", "same@example.com", 2),
		}},
		{name: "a deletion in the batch", batch: []hookEvent{
			signUp("msg_1", "user_1", "one@example.com", 1),
			{SvixID: "msg_2", Type: "user.deleted", Kind: "user", ID: "user_2", Deleted: true},
		}},
		{name: "an organization in the batch", batch: []hookEvent{
			signUp("msg_1", "user_1", "one@example.com", 1),
			{SvixID: "msg_o", Type: "organization.created", Kind: "organization", ID: "org_1", Name: "One", UpdatedAt: 1},
		}},
		{name: "an event the database refuses", batch: []hookEvent{
			signUp("msg_1", "user_1", "one@example.com", 1), signUp("msg_2", "", "two@example.com", 1),
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			batched, general := testdb.Pool(t), testdb.Pool(t)
			for _, db := range []*pgxpool.Pool{batched, general} {
				if c.allowance {
					if _, err := db.Exec(ctx, `SELECT userd_set_plan_allowance('FREE', 5, 'month', 0, 0, 'test')`); err != nil {
						t.Fatal(err)
					}
				}
				for _, ev := range c.before {
					applyBatch(t, db, []hookEvent{ev})
				}
			}
			got := applyBatch(t, batched, c.batch)
			want := applyOneByOne(t, general, c.batch)
			if !slices.Equal(got, want) {
				t.Errorf("outcomes %q, one by one %q", got, want)
			}
			if g, w := dumpState(t, batched), dumpState(t, general); g != w {
				t.Errorf("the batch left\n%s\n\none by one left\n%s", g, w)
			}
			// The batch's new Svix ids: recorded by one writer (the fast
			// path's subtransaction) or one each (the general path's).
			// (Not the users' xmin: moving an email updates the holder.)
			var fresh []string
			for _, ev := range c.batch {
				if !slices.ContainsFunc(c.before, func(b hookEvent) bool { return b.SvixID == ev.SvixID }) {
					fresh = append(fresh, ev.SvixID)
				}
			}
			var rows, writers int
			if err := batched.QueryRow(ctx, `SELECT count(*), count(DISTINCT xmin::text) FROM webhook_events
				WHERE svix_id = ANY($1)`, fresh).Scan(&rows, &writers); err != nil {
				t.Fatal(err)
			}
			if fast := rows > 1 && writers == 1; fast != c.fast {
				t.Errorf("%d new Svix ids recorded by %d subtransactions: fast path %v, want %v", rows, writers, fast, c.fast)
			}
		})
	}
}

func applyBatch(t *testing.T, db *pgxpool.Pool, events []hookEvent) []string {
	t.Helper()
	raw, err := json.Marshal(events)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query(context.Background(),
		`SELECT outcome || coalesce(' ' || error_code, '') FROM userd_apply_clerk_batch($1, 10, 7, true) ORDER BY ordinal`, raw)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// applyOneByOne applies events in one transaction, each through the
// general path's function in a savepoint of its own.
func applyOneByOne(t *testing.T, db *pgxpool.Pool, events []hookEvent) []string {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it does nothing
	var out []string
	for i, ev := range events {
		var q string
		var args []any
		switch {
		case ev.Kind == "organization":
			q, args = `SELECT userd_apply_clerk_organization($1, $2, $3, $4, '', '', $5, 7)`,
				[]any{ev.SvixID, ev.Type, ev.ID, ev.Name, ev.UpdatedAt}
		case ev.Deleted:
			q, args = `SELECT userd_delete_clerk_user($1, $2, $3, true)`, []any{ev.SvixID, ev.Type, ev.ID}
		default:
			q, args = `SELECT userd_apply_clerk_user($1, $2, $3, $4, $5, $6, $7, $8, 10)`,
				[]any{ev.SvixID, ev.Type, ev.ID, ev.Email, ev.FirstName, ev.LastName, ev.ImageURL, ev.UpdatedAt}
		}
		sp := fmt.Sprintf("event_%d", i)
		if _, err := tx.Exec(ctx, "SAVEPOINT "+sp); err != nil {
			t.Fatal(err)
		}
		var outcome string
		if err := tx.QueryRow(ctx, q, args...).Scan(&outcome); err != nil {
			if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+sp); err != nil {
				t.Fatal(err)
			}
			outcome = "retry " + sqlState(err)
		}
		out = append(out, outcome)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return out
}

// dumpState is what the Clerk events wrote, without what differs between
// two databases (generated ids, times): one sorted line per row.
func dumpState(t *testing.T, db *pgxpool.Pool) string {
	t.Helper()
	var s string
	if err := db.QueryRow(context.Background(), `
		WITH owner AS (
			SELECT a.id, coalesce(u.clerk_user_id, o.clerk_org_id) AS name
			FROM accounts a LEFT JOIN users u ON u.id = a.owner_user_id LEFT JOIN organizations o ON o.id = a.organization_id
		)
		SELECT coalesce(string_agg(line, E'\n' ORDER BY line), '') FROM (
			SELECT concat_ws(' ', 'user', u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url,
			                 u.clerk_updated_at, u.deleted_at IS NOT NULL) AS line FROM users u
			UNION ALL
			SELECT concat_ws(' ', 'account', owner.name, a.plan, a.credits, a.expiring_credits,
			                 a.next_refill_at IS NOT NULL, a.closed_at IS NOT NULL)
			FROM accounts a JOIN owner ON owner.id = a.id
			UNION ALL
			SELECT concat_ws(' ', 'entry', owner.name, row_number() OVER (PARTITION BY t.user_id ORDER BY t.id),
			                 t.kind, t.delta, t.balance_after, t.reason, t.idempotency_key, t.service,
			                 t.actor_user_id IS NOT NULL)
			FROM credit_transactions t JOIN owner ON owner.id = t.user_id
			UNION ALL
			SELECT concat_ws(' ', 'event', coalesce(e.clerk_user_id, e.clerk_org_id),
			                 row_number() OVER (PARTITION BY coalesce(e.clerk_user_id, e.clerk_org_id) ORDER BY e.order_xid, e.id),
			                 e.kind, e.account_id IS NOT NULL, e.actor_clerk_user_id,
			                 e.payload - 'id' - 'created_at' - 'updated_at' - 'deleted_at')
			FROM feed_events e
			UNION ALL
			SELECT concat_ws(' ', 'webhook', w.svix_id, w.event_type, w.object_id, w.outcome) FROM webhook_events w
		) x`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return err.Error()
}
