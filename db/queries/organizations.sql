-- Queries on mirrored Clerk organizations and memberships (see
-- db/migrations/00011_organizations.sql).

-- ApplyClerkBatch applies a batch of Clerk deliveries (users,
-- organizations, memberships) in one round trip, each in its own
-- subtransaction, or a batch of sign-ups only all in one (see
-- userd_apply_clerk_batch in db/schema.sql); one row per event, in order.
-- name: ApplyClerkBatch :many
SELECT r.ordinal::integer AS ordinal, r.outcome::text AS outcome, coalesce(r.error_code, '')::text AS error_code
FROM userd_apply_clerk_batch(@events::jsonb, @initial_credits::bigint, @org_initial_credits::bigint,
    @erase_deleted::boolean) AS r;

-- OrganizationsOf is the Clerk ids of the live organizations where the
-- user has a live membership (userd_live_membership's rule), in order.
-- name: OrganizationsOf :many
SELECT DISTINCT m.clerk_org_id::text AS clerk_org_id
FROM organization_memberships m
JOIN organizations o ON o.clerk_org_id = m.clerk_org_id AND o.deleted_at IS NULL
WHERE m.clerk_user_id = @clerk_user_id::text AND m.deleted_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM users u WHERE u.clerk_user_id = m.clerk_user_id AND u.deleted_at IS NOT NULL)
ORDER BY 1;

-- GetOrganization reads an organization (deleted or not), its account and
-- its live members (newest membership per user, as userd_live_membership
-- picks it) in one statement.
-- name: GetOrganization :one
SELECT o.id, o.clerk_org_id, o.name, o.slug, o.image_url, o.clerk_updated_at, o.created_at, o.updated_at,
       o.deleted_at, a.id AS account_id, a.closed_at AS account_closed_at,
       coalesce((
           SELECT jsonb_agg(jsonb_build_object(
               'clerk_membership_id', lm.clerk_membership_id, 'clerk_user_id', lm.clerk_user_id,
               'role', lm.role, 'permissions', to_jsonb(lm.permissions), 'clerk_updated_at', lm.clerk_updated_at,
               'created_at', lm.created_at, 'updated_at', lm.updated_at) ORDER BY lm.clerk_user_id)
           FROM (
               SELECT DISTINCT ON (m.clerk_user_id) m.* FROM organization_memberships m
               WHERE m.clerk_org_id = o.clerk_org_id AND m.deleted_at IS NULL AND o.deleted_at IS NULL
                 AND NOT EXISTS (SELECT 1 FROM users u WHERE u.clerk_user_id = m.clerk_user_id AND u.deleted_at IS NOT NULL)
               ORDER BY m.clerk_user_id, m.clerk_updated_at DESC, m.clerk_membership_id
           ) lm
       ), '[]'::jsonb)::jsonb AS members
FROM organizations o
LEFT JOIN accounts a ON a.organization_id = o.id
WHERE o.clerk_org_id = @clerk_org_id::text;

-- GetClerkOrgVersions returns, for each of the Clerk organization ids that
-- has a row, the Clerk updated_at of its stored state and whether it is
-- deleted (what `userd sync-clerk` compares the listing with).
-- name: GetClerkOrgVersions :many
SELECT clerk_org_id, coalesce(clerk_updated_at, 0)::bigint AS clerk_updated_at, (deleted_at IS NOT NULL)::boolean AS deleted
FROM organizations
WHERE clerk_org_id = ANY(@clerk_org_ids::text[]);

-- ListLiveClerkOrgIDs pages through the Clerk ids of live organizations
-- in id order: after = '' for the first page, then the last id seen.
-- name: ListLiveClerkOrgIDs :many
SELECT clerk_org_id FROM organizations
WHERE deleted_at IS NULL AND clerk_org_id > @after::text
ORDER BY clerk_org_id
LIMIT @row_limit::int;

-- GetClerkMembershipVersions is GetClerkOrgVersions for memberships.
-- name: GetClerkMembershipVersions :many
SELECT clerk_membership_id, clerk_updated_at, (deleted_at IS NOT NULL)::boolean AS deleted
FROM organization_memberships
WHERE clerk_membership_id = ANY(@clerk_membership_ids::text[]);

-- ListLiveMemberships returns every live membership row of an
-- organization, by membership id (what `userd sync-clerk
-- --delete-missing` compares Clerk's listing with).
-- name: ListLiveMemberships :many
SELECT * FROM organization_memberships
WHERE clerk_org_id = @clerk_org_id::text AND deleted_at IS NULL
ORDER BY clerk_membership_id;
