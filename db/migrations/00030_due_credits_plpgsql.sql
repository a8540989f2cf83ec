-- +goose Up
-- userd_account_due_credits in PL/pgSQL (issue 24): every read of a
-- balance calls it (GetUser, EnsureUser, GetAccount, the affordability
-- checks). As a LANGUAGE sql function with a sub-select, PostgreSQL could
-- not inline it, so each call ran the SQL-function executor, which parses
-- and plans the body again in every statement that calls it: about 250 µs
-- of a GetUser's read (pgbench: the read at 0.4-0.6 of the same read
-- without the call). PL/pgSQL keeps the body's plan for the session and
-- decides p_expiring > 0 without the executor, so an account without
-- expiring credits costs a simple expression and one with them one cached
-- plan. Written inline in each query instead (CASE with the sub-select),
-- the sub-plan's executor start-up would still cost every read. Same
-- signature, same answers, STABLE: the sub-select reads with the calling
-- statement's snapshot, as before.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_due_credits(p_account_id uuid, p_expiring bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- What a read must not count of an account holding p_expiring
    -- expiring credits: the remainder of its grants that are due but not
    -- yet expired by the ledger (the job or the next spend expires them).
    -- An account without expiring credits (or none: NULL) reads no other
    -- row.
    IF p_expiring > 0 THEN
        RETURN coalesce(
            (SELECT sum(g.remaining) FROM credit_grants g
             WHERE g.account_id = p_account_id AND g.expired_at IS NULL AND g.expires_at <= now()), 0)::bigint;
    END IF;
    RETURN 0;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- Nothing: the function keeps its signature and answers every call as
-- 00022's body did, so the previous release runs on it, and restoring that
-- body here would copy it once more (db/README.md). 00022's down drops it.
