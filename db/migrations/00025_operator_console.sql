-- +goose NO TRANSACTION
-- The operator console (issue 23): the audit log of operator corrections,
-- closing an account, and an index for the console's email-prefix search.
-- Additive only: the previous release neither reads nor writes any of it.
-- No transaction, so that the index is built CONCURRENTLY (users keeps
-- taking writes); every statement is safe to run again.

-- +goose Up
-- operator_audit holds one row per correction an operator made in the
-- console (grant, deduct, set plan, close), written in the transaction of
-- the change itself: a correction without its audit row never commits, and
-- an audit row without its change never exists. before and after are the
-- account's state (plan, balance, closed) read under the account's row lock
-- just before and just after the change. A replay of a correction (the same
-- idempotency key: a double submit) changes nothing and writes no row.
CREATE TABLE IF NOT EXISTS operator_audit (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- The operator's Clerk user id, and the role it acted with.
    operator        text        NOT NULL,
    operator_role   text        NOT NULL,
    action          text        NOT NULL,
    account_id      uuid        NOT NULL CONSTRAINT operator_audit_account_fkey REFERENCES accounts (id),
    -- What was asked (amount, plan, ...), as the console sent it.
    details         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text        NOT NULL,
    reason          text        NOT NULL,
    before          jsonb       NOT NULL,
    after           jsonb       NOT NULL,
    CONSTRAINT operator_audit_action_valid CHECK (action IN ('grant', 'deduct', 'set_plan', 'close')),
    CONSTRAINT operator_audit_reason_not_empty CHECK (reason <> ''),
    CONSTRAINT operator_audit_operator_not_empty CHECK (operator <> '')
);

CREATE INDEX IF NOT EXISTS operator_audit_account_idx ON operator_audit (account_id, id);

-- The console finds users by a prefix of their email: a byte-order (C
-- collation) index on the lowercased email serves a range scan for any
-- prefix, whatever the database's collation.
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_email_prefix_idx ON users ((lower(email) COLLATE "C"))
    WHERE deleted_at IS NULL AND email IS NOT NULL;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_close(p_account_id uuid, OUT status text, OUT closed_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    -- Closes an account: from then on it refuses spends, grants and plan
    -- changes (as the account of a deleted organization does) and keeps
    -- its ledger. status: 'applied', 'already_closed' (closed_at is when),
    -- or 'not_found'. The account's row lock orders it with every write.
    SELECT a.closed_at INTO closed_at FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    IF closed_at IS NOT NULL THEN
        status := 'already_closed';
        RETURN;
    END IF;
    UPDATE accounts a SET closed_at = now(), updated_at = now() WHERE a.id = p_account_id
    RETURNING a.closed_at INTO closed_at;
    status := 'applied';
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION IF EXISTS userd_account_close(uuid);
DROP INDEX CONCURRENTLY IF EXISTS users_email_prefix_idx;
DROP TABLE IF EXISTS operator_audit;
