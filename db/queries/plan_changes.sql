-- Queries on plan changes.

-- SetPlan changes the plan of a user's personal account and grants the
-- bonus in one round trip (see the function userd_personal_set_plan in
-- db/schema.sql); service is the calling service's name.
-- name: SetPlan :one
SELECT * FROM userd_personal_set_plan(@clerk_user_id::text, sqlc.narg(service)::text, @plan::text,
    @bonus::bigint, @reason::text, @idempotency_key::text);
