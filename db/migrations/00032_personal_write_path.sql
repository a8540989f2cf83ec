-- +goose NO TRANSACTION
-- +goose Up
-- The personal-account write path (issue 20: a deduction, a grant, a plan
-- change and a user's creation cost PostgreSQL more than before accounts).
-- Expand-only: the previous release keeps working on this schema.
--
-- 1. The feed triggers of the ledger, of plan changes and of a user's
--    insert get a WHEN clause that skips them when the transaction's writer
--    writes its own events (userd.writer_emits_events, set by every writer
--    since 00020 before its first write). Their functions returned at once
--    in that case; now such a write no longer queues an after-trigger event
--    nor calls PL/pgSQL per row. A writer of before 00020 (the previous
--    release's replicas never set the setting) still gets its events from
--    the triggers, as before: the WHEN is the functions' own test.
--    CREATE OR REPLACE TRIGGER swaps each trigger in one statement, so no
--    write runs between a drop and a create without its trigger.
--
-- 2. The member index of 00026 (an account's entries by the user who acted)
--    is needed only for the entries a member made for another account than
--    its own: an organization's. A personal account's entries name the
--    account's owner as their actor (or none: initial credits, a service's
--    grant) and its ledger pages read (user_id, id) whatever the filter.
--    The partial index below holds only entries whose actor is not the
--    account (actor_user_id <> user_id, which no NULL actor passes), so a
--    personal deduction, grant or sign-up writes one index entry less; this
--    release's ListMemberCreditTransactions reads it (the owner of a
--    personal account in a second branch, from (user_id, id)). Built
--    CONCURRENTLY, outside a transaction, so the ledger keeps taking
--    writes while it builds; a failed build leaves an invalid index that
--    the DROP clears before the next attempt (as in 00026). The full index
--    of 00026 stays until 00033 (post-deploy): the previous release's
--    query reads it.
DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_member_actor_idx;
CREATE INDEX CONCURRENTLY credit_transactions_member_actor_idx
    ON credit_transactions (user_id, actor_user_id, id) WHERE actor_user_id <> user_id;

CREATE OR REPLACE TRIGGER credit_transactions_feed AFTER INSERT ON credit_transactions
    FOR EACH ROW WHEN (current_setting('userd.writer_emits_events', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION userd_credit_transactions_feed();

CREATE OR REPLACE TRIGGER plan_changes_feed AFTER INSERT ON plan_changes
    FOR EACH ROW WHEN (current_setting('userd.writer_emits_events', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION userd_plan_changes_feed();

CREATE OR REPLACE TRIGGER users_feed_insert AFTER INSERT ON users
    FOR EACH ROW WHEN (current_setting('userd.writer_emits_events', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION userd_users_feed();

-- +goose Down
CREATE OR REPLACE TRIGGER users_feed_insert AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION userd_users_feed();

CREATE OR REPLACE TRIGGER plan_changes_feed AFTER INSERT ON plan_changes
    FOR EACH ROW EXECUTE FUNCTION userd_plan_changes_feed();

CREATE OR REPLACE TRIGGER credit_transactions_feed AFTER INSERT ON credit_transactions
    FOR EACH ROW EXECUTE FUNCTION userd_credit_transactions_feed();

DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_member_actor_idx;
