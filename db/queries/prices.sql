-- Queries on the price list and its audit history.

-- SetPrice sets an action's price and records the change in one round trip
-- (see the function userd_set_price in db/schema.sql).
-- name: SetPrice :one
SELECT * FROM userd_set_price(@action::text, @credits::bigint, @changed_by::text);

-- ListPrices pages through the price list by action name: pass after = ''
-- for the first page, then the last action seen.
-- name: ListPrices :many
SELECT * FROM prices
WHERE action > @after::text
ORDER BY action
LIMIT @row_limit;

-- ListPriceChanges pages through the audit history, newest first, of one
-- action (action = '') or of all; before_id = 0 for the first page, then the
-- id of the last change seen.
-- name: ListPriceChanges :many
SELECT * FROM price_changes
WHERE (@action::text = '' OR action = @action::text)
  AND (@before_id::bigint = 0 OR id < @before_id::bigint)
ORDER BY id DESC
LIMIT @row_limit;

-- CheckAffordability reads an action's price (NULL when the action is
-- unknown or not asked for) and the balance of a live user's personal account (NULL when there is
-- no such user) in one round trip.
-- name: CheckAffordability :one
SELECT p.credits AS price, a.credits AS available,
       userd_account_due(a.id, a.expiring_credits)::bigint AS due
FROM (VALUES (1)) AS one (n)
LEFT JOIN prices p ON p.action = @action::text
LEFT JOIN users u ON u.clerk_user_id = @clerk_user_id::text AND u.deleted_at IS NULL
LEFT JOIN accounts a ON a.id = u.id;
