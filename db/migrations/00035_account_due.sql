-- +goose Up
-- What a balance read leaves out, in one place. Every read of a balance
-- (a user, an account, an affordability check) subtracts the due part of
-- its expiring grants, and since issue 24 each wrote the same shortcut
-- around userd_account_due_credits: 0 without calling it when the account
-- holds no expiring credits (most of them; a PL/pgSQL call per row was
-- about a tenth of a single-row read's cost). userd_account_due is that
-- shortcut. A one-expression SQL function, STABLE like the function it
-- calls, so the planner inlines it into each query: the plan is the CASE
-- the queries wrote, and the PL/pgSQL function still runs only for an
-- account holding expiring credits. Expand-only: nothing of the previous
-- release changes.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_due(p_account_id uuid, p_expiring bigint)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_expiring = 0 THEN 0::bigint ELSE userd_account_due_credits(p_account_id, p_expiring) END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION userd_account_due(uuid, bigint);
