-- Queries on plan changes.

-- SetPlan changes the plan and grants the bonus in one round trip (see the
-- function userd_set_plan in db/schema.sql).
-- name: SetPlan :one
SELECT * FROM userd_set_plan(@clerk_user_id::text, @plan::text, @bonus::bigint, @reason::text, @idempotency_key::text);
