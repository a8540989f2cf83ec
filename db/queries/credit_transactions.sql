-- Queries on the credit ledger.

-- ChangeCredits deducts or grants on a user's personal account in one
-- round trip (see the function userd_personal_change_credits in db/schema.sql): the
-- status says what happened. service is the calling service's name (NULL
-- for the user itself).
-- name: ChangeCredits :one
SELECT * FROM userd_personal_change_credits(@clerk_user_id::text, sqlc.narg(service)::text, @kind::text,
    @delta::bigint, @reason::text, @idempotency_key::text);

-- DeductCreditsForAction charges one use of an action at its current price
-- in one round trip (see the function userd_personal_deduct_for_action in
-- db/schema.sql): the status says what happened.
-- name: DeductCreditsForAction :one
SELECT * FROM userd_personal_deduct_for_action(@clerk_user_id::text, sqlc.narg(service)::text, @action::text,
    @idempotency_key::text);

-- SummarizeUsage sums the ledger entries of a live user's personal account with
-- period_starts[1] <= created_at < end_time by reason, in one statement (one
-- snapshot, so the balance and the sums agree). Period n (n >= 1) holds the
-- entries from period_starts[n] up to the next start (or end_time); period
-- 0 is the whole window. In each period the period_reasons reasons with the
-- most credits moved (window_reasons for period 0) get a row each, ordered
-- by credits moved, then reason; the rest are summed in one row with other
-- = true. Every row carries the balance; a user without entries in the
-- window gets one row whose period is NULL, and no live user, no row.
-- Served by credit_transactions_user_id_created_at_idx (index only).
-- name: SummarizeUsage :many
WITH owner AS (
    SELECT a.id, a.credits FROM users u JOIN accounts a ON a.id = u.id
    WHERE u.clerk_user_id = @clerk_user_id::text AND u.deleted_at IS NULL
), sums AS (
    SELECT coalesce(e.period, 0)::int AS period, e.reason,
           sum(e.spent) AS spent, sum(e.granted) AS granted, count(*) AS entries
    FROM (
        SELECT width_bucket(t.created_at, @period_starts::timestamptz[]) AS period, t.reason,
               greatest(-t.delta, 0) AS spent, greatest(t.delta, 0) AS granted
        FROM owner
        JOIN credit_transactions t ON t.user_id = owner.id
        WHERE t.created_at >= (@period_starts::timestamptz[])[1] AND t.created_at < @end_time::timestamptz
    ) e
    GROUP BY GROUPING SETS ((e.period, e.reason), (e.reason))
), ranked AS (
    SELECT s.*, row_number() OVER (PARTITION BY s.period ORDER BY s.spent + s.granted DESC, s.reason) AS rank
    FROM sums s
), folded AS (
    SELECT r.period, o.other, (CASE WHEN o.other THEN '' ELSE r.reason END)::text AS reason,
           sum(r.spent)::bigint AS spent, sum(r.granted)::bigint AS granted,
           sum(r.entries)::bigint AS entries, min(r.rank) AS rank
    FROM ranked r
    CROSS JOIN LATERAL (SELECT r.rank > CASE WHEN r.period = 0 THEN @window_reasons::int
                                             ELSE @period_reasons::int END AS other) o
    GROUP BY 1, 2, 3
)
SELECT owner.credits AS balance, f.period, f.reason, f.other, f.spent, f.granted, f.entries
FROM owner
LEFT JOIN folded f ON true
ORDER BY f.period, f.rank;
