-- Queries on plan changes.

-- name: InsertPlanChange :one
INSERT INTO plan_changes (user_id, previous_plan, plan, bonus_credits, transaction_id, reason, idempotency_key)
VALUES (@user_id, @previous_plan, @plan, @bonus_credits, @transaction_id, @reason, @idempotency_key)
RETURNING *;

-- name: GetPlanChangeByKey :one
SELECT * FROM plan_changes
WHERE user_id = @user_id AND idempotency_key = @idempotency_key;
