// Runs against a real userd: USERD_URL is its HTTP API, USERD_SESSION_TOKEN
// a Clerk session token of USERD_CLERK_USER_ID it accepts, and
// USERD_SERVICE_TOKEN a service token. clients/typescript/client_test.go
// starts one and runs `npm test` with them.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  createUserdClient,
  errorReason,
  fieldViolations,
  hasCredits,
  insufficientCredits,
  isOrganizationRefusal,
  isProOrHigher,
  isUnknownAction,
  memberCapReached,
} from "../src/index.js";

function env(name: string): string {
  const v = process.env[name];
  assert.ok(v, `${name} is not set: run this test through clients/typescript/client_test.go (go test)`);
  return v;
}

const baseUrl = env("USERD_URL");
const sessionToken = env("USERD_SESSION_TOKEN");
const serviceToken = env("USERD_SERVICE_TOKEN");
const clerkUserId = env("USERD_CLERK_USER_ID");

test("a signed-in user ensures, reads itself and its ledger", async () => {
  let calls = 0;
  const userd = createUserdClient({
    baseUrl,
    getToken: async () => {
      calls++;
      return sessionToken;
    },
  });

  const ensured = await userd.POST("/v1/users/{clerkUserId}:ensure", {
    params: { path: { clerkUserId: "me" } },
  });
  assert.equal(ensured.response.status, 200, JSON.stringify(ensured.error));
  assert.equal(ensured.data?.user.clerkUserId, clerkUserId);
  assert.equal(ensured.response.headers.get("x-request-id")?.includes(","), false);

  const me = await userd.GET("/v1/users/{clerkUserId}", {
    params: { path: { clerkUserId: "me" }, header: { "X-Request-Id": "ts-test-1" } },
  });
  assert.ok(me.data, JSON.stringify(me.error));
  assert.equal(me.response.headers.get("x-request-id"), "ts-test-1");
  assert.equal(me.data.user.plan, "PLAN_FREE");
  assert.ok(hasCredits(me.data.user, 10));
  assert.ok(!hasCredits(me.data.user, 11n));
  assert.ok(!isProOrHigher(me.data.user));

  const ledger = await userd.GET("/v1/users/{clerkUserId}/credit-transactions", {
    params: { path: { clerkUserId: "me" }, query: { pageSize: 10 } },
  });
  assert.ok(ledger.data, JSON.stringify(ledger.error));
  assert.deepEqual(
    ledger.data.transactions.map((t) => [t.kind, t.delta]),
    [["TRANSACTION_KIND_INITIAL", "10"]],
  );
  assert.ok(calls >= 3, "getToken was not called for every request");

  // Credits are the services' business.
  const grant = await userd.POST("/v1/users/{clerkUserId}/credits:grant", {
    params: { path: { clerkUserId: "me" }, header: { "Idempotency-Key": "ts-grant" } },
    body: { amount: "1000" },
  });
  assert.equal(grant.response.status, 403);
  assert.equal(grant.error?.code, 7);
});

test("a service sees typed errors", async () => {
  const userd = createUserdClient({ baseUrl, getToken: () => serviceToken });
  const user = await userd.GET("/v1/users:lookup", {
    params: { query: { clerkUserId } },
  });
  assert.ok(user.data, JSON.stringify(user.error));

  const tooMuch = await userd.POST("/v1/users/{clerkUserId}/credits:deduct", {
    params: { path: { clerkUserId }, header: { "Idempotency-Key": "ts-deduct-1" } },
    body: { amount: "25", reason: "render" },
  });
  assert.equal(tooMuch.response.status, 402);
  assert.deepEqual(insufficientCredits(tooMuch.error), { required: 25n, available: 10n });

  const bad = await userd.POST("/v1/users/{clerkUserId}/credits:deduct", {
    params: { path: { clerkUserId } },
    body: { amount: "0", idempotencyKey: "ts-deduct-2" },
  });
  assert.equal(bad.response.status, 400);
  assert.deepEqual(fieldViolations(bad.error).map((v) => v.field), ["amount"]);

  const plan = await userd.POST("/v1/users/{clerkUserId}/plan", {
    params: { path: { clerkUserId } },
    body: { plan: "PLAN_PRO", idempotencyKey: "ts-plan-1" },
  });
  assert.ok(plan.data, JSON.stringify(plan.error));
  assert.ok(isProOrHigher(plan.data.user));

  const reused = await userd.POST("/v1/users/{clerkUserId}/plan", {
    params: { path: { clerkUserId } },
    body: { plan: "PLAN_ENTERPRISE", idempotencyKey: "ts-plan-1" },
  });
  assert.equal(reused.response.status, 409);
  assert.equal(errorReason(reused.error), "IDEMPOTENCY_KEY_REUSED");

  const nobody = await userd.GET("/v1/users/{clerkUserId}", {
    params: { path: { clerkUserId: "user_nobody" } },
  });
  assert.equal(nobody.response.status, 404);
  assert.equal(nobody.error?.code, 5);
});

test("no token is 401", async () => {
  const userd = createUserdClient({ baseUrl });
  const r = await userd.GET("/v1/users/{clerkUserId}", { params: { path: { clerkUserId: "me" } } });
  assert.equal(r.response.status, 401);
  assert.match(r.response.headers.get("www-authenticate") ?? "", /^Bearer/);
});

test("a service prices actions and charges by them; the user sees its usage", async () => {
  const service = createUserdClient({ baseUrl, getToken: () => serviceToken });
  const user = createUserdClient({ baseUrl, getToken: () => sessionToken });
  // The user exists (the first test ensures it; this one may run alone).
  await user.POST("/v1/users/{clerkUserId}:ensure", { params: { path: { clerkUserId: "me" } } });

  const set = await service.PUT("/v1/prices/{action}", {
    params: { path: { action: "thumbnail" } },
    body: { credits: "1" },
  });
  assert.ok(set.data, JSON.stringify(set.error));
  assert.equal(set.data.price.credits, "1");
  assert.equal(set.data.change?.changedBy, "service:tests");

  const prices = await service.GET("/v1/prices", { params: { query: { pageSize: 100 } } });
  assert.ok(prices.data?.prices.some((p) => p.action === "thumbnail" && p.credits === "1"), JSON.stringify(prices));
  const history = await service.GET("/v1/price-changes", { params: { query: { action: "thumbnail" } } });
  assert.equal(history.data?.changes.length, 1, JSON.stringify(history));

  const afford = await user.GET("/v1/users/{clerkUserId}/credits:canAfford", {
    params: { path: { clerkUserId: "me" }, query: { action: "thumbnail" } },
  });
  assert.ok(afford.data, JSON.stringify(afford.error));
  assert.equal(afford.data.required, "1");
  assert.equal(afford.data.allowed, true);

  const charged = await service.POST("/v1/users/{clerkUserId}/credits:deduct", {
    params: { path: { clerkUserId }, header: { "Idempotency-Key": "ts-thumb-1" } },
    body: { action: "thumbnail" },
  });
  assert.ok(charged.data, JSON.stringify(charged.error));
  assert.equal(charged.data.transaction.delta, "-1");
  assert.equal(charged.data.transaction.reason, "thumbnail");
  assert.equal(charged.data.replayed, false);

  // The same key again: the original entry, and the response says it was a replay.
  const again = await service.POST("/v1/users/{clerkUserId}/credits:deduct", {
    params: { path: { clerkUserId }, header: { "Idempotency-Key": "ts-thumb-1" } },
    body: { action: "thumbnail" },
  });
  assert.ok(again.data, JSON.stringify(again.error));
  assert.equal(again.data.replayed, true);
  assert.equal(again.data.transaction.id, charged.data.transaction.id);

  const unknown = await service.POST("/v1/users/{clerkUserId}/credits:deduct", {
    params: { path: { clerkUserId }, header: { "Idempotency-Key": "ts-thumb-2" } },
    body: { action: "no-such-action" },
  });
  assert.equal(unknown.response.status, 400);
  assert.ok(isUnknownAction(unknown.error));
  assert.ok(!isUnknownAction(charged.error));

  const since = new Date(Date.now() - 3600_000).toISOString();
  const usage = await user.GET("/v1/users/{clerkUserId}/usage", {
    params: { path: { clerkUserId: "me" }, query: { startTime: since, groupBy: "USAGE_PERIOD_DAY" } },
  });
  assert.ok(usage.data, JSON.stringify(usage.error));
  const thumbnails = usage.data.reasons.find((r) => r.reason === "thumbnail");
  assert.equal(thumbnails?.spent, "1");
  assert.ok(usage.data.periods.length >= 1);
  assert.equal(usage.data.groupBy, "USAGE_PERIOD_DAY");

  // The price list is the services' business.
  const denied = await user.PUT("/v1/prices/{action}", {
    params: { path: { action: "thumbnail" } },
    body: { credits: "0" },
  });
  assert.equal(denied.response.status, 403);
});

test("accounts: the user reads its own; an organization not active in its session is refused", async () => {
  const user = createUserdClient({ baseUrl, getToken: () => sessionToken });
  const service = createUserdClient({ baseUrl, getToken: () => serviceToken });
  await user.POST("/v1/users/{clerkUserId}:ensure", { params: { path: { clerkUserId: "me" } } });

  const mine = await user.GET("/v1/users/{clerkUserId}/account", { params: { path: { clerkUserId: "me" } } });
  assert.ok(mine.data, JSON.stringify(mine.error));
  assert.equal(mine.data.account.ownerClerkUserId, clerkUserId);
  assert.equal(mine.data.account.clerkOrganizationId, "");
  assert.deepEqual(mine.data.account.members, []);

  // The session token names no active organization: every organization's
  // account is refused, reading and spending, and nothing changes.
  const read = await user.GET("/v1/organizations/{clerkOrganizationId}/account", {
    params: { path: { clerkOrganizationId: "org_typescript" } },
  });
  assert.equal(read.response.status, 403);
  assert.equal(errorReason(read.error), "ORGANIZATION_NOT_ACTIVE");
  assert.ok(isOrganizationRefusal(read.error));
  const spend = await user.POST("/v1/organizations/{clerkOrganizationId}/credits:deduct", {
    params: { path: { clerkOrganizationId: "org_typescript" }, header: { "Idempotency-Key": "ts-org-1" } },
    body: { amount: "1" },
  });
  assert.equal(spend.response.status, 403);
  assert.ok(isOrganizationRefusal(spend.error));
  assert.equal(memberCapReached(spend.error), undefined);
  const cap = await user.PUT("/v1/organizations/{clerkOrganizationId}/members/{memberClerkUserId}/spending-cap", {
    params: { path: { clerkOrganizationId: "org_typescript", memberClerkUserId: clerkUserId } },
    body: { period: "USAGE_PERIOD_DAY", cap: "5" },
  });
  assert.equal(cap.response.status, 403);

  // A service may name any organization: one userd does not know is 404.
  const unknown = await service.GET("/v1/organizations/{clerkOrganizationId}/account", {
    params: { path: { clerkOrganizationId: "org_typescript" } },
  });
  assert.equal(unknown.response.status, 404, JSON.stringify(unknown.error));

  // An organization's plan is a service's to change; its usage summary,
  // by member, is readable like its account.
  const plan = await user.POST("/v1/organizations/{clerkOrganizationId}/plan", {
    params: { path: { clerkOrganizationId: "org_typescript" }, header: { "Idempotency-Key": "ts-org-plan-1" } },
    body: { plan: "PLAN_PRO", bonusCredits: "5" },
  });
  assert.equal(plan.response.status, 403);
  const usage = await user.GET("/v1/organizations/{clerkOrganizationId}/usage", {
    params: { path: { clerkOrganizationId: "org_typescript" }, query: { byMember: true } },
  });
  assert.equal(usage.response.status, 403);
  assert.equal(errorReason(usage.error), "ORGANIZATION_NOT_ACTIVE");
  const unknownPlan = await service.POST("/v1/organizations/{clerkOrganizationId}/plan", {
    params: { path: { clerkOrganizationId: "org_typescript" }, header: { "Idempotency-Key": "ts-org-plan-2" } },
    body: { plan: "PLAN_PRO" },
  });
  assert.equal(unknownPlan.response.status, 404, JSON.stringify(unknownPlan.error));
  const unknownUsage = await service.GET("/v1/organizations/{clerkOrganizationId}/usage", {
    params: { path: { clerkOrganizationId: "org_typescript" }, query: { byMember: true } },
  });
  assert.equal(unknownUsage.response.status, 404, JSON.stringify(unknownUsage.error));
});
