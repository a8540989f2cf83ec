/**
 * Typed client of userd's HTTP API. The types are generated from userd's
 * OpenAPI document (gen/openapi/userd.openapi.json) by openapi-typescript;
 * requests go through openapi-fetch, so paths, parameters, bodies and
 * responses are checked by the compiler.
 *
 *   const userd = createUserdClient({ baseUrl: "https://users.example.com", getToken });
 *   const { data, error } = await userd.GET("/v1/users/{clerkUserId}", {
 *     params: { path: { clerkUserId: "me" } },
 *   });
 */
import createClient, { type Client, type Middleware } from "openapi-fetch";

import type { components, paths } from "./schema.js";

export type { components, paths } from "./schema.js";

export type User = components["schemas"]["User"];
export type Plan = components["schemas"]["Plan"];
export type CreditTransaction = components["schemas"]["CreditTransaction"];
export type TransactionKind = components["schemas"]["TransactionKind"];
/** The body of every error response. */
export type Status = components["schemas"]["Status"];
export type ErrorInfo = components["schemas"]["ErrorInfo"];
export type BadRequest = components["schemas"]["BadRequest"];
/**
 * GET /v1/users/{clerkUserId}/usage or /v1/organizations/{clerkOrganizationId}/usage
 * (?byMember=true: byMember too): credits spent and granted over a window.
 */
export type UsageSummary = components["schemas"]["GetUsageSummaryResponse"];
export type UsageByMember = components["schemas"]["UsageByMember"];
export type UsageByReason = components["schemas"]["UsageByReason"];
export type UsageInPeriod = components["schemas"]["UsageInPeriod"];
export type UsagePeriod = components["schemas"]["UsagePeriod"];
/** GET /v1/users/{clerkUserId}/credits:canAfford: required, available, allowed. */
export type Affordability = components["schemas"]["CanAffordResponse"];
export type Price = components["schemas"]["Price"];
/** GET /v1/users/{clerkUserId}/account or /v1/organizations/{clerkOrganizationId}/account. */
export type Account = components["schemas"]["Account"];
export type AccountMember = components["schemas"]["AccountMember"];
export type PriceChange = components["schemas"]["PriceChange"];
// Grants with expiry and the plan catalog: GET /v1/users/{id}/grants (or
// /v1/organizations/{id}/grants), GET /v1/plan-catalog, PUT
// /v1/plan-catalog/{plan}; POST .../credits:grant takes expiresAt.
export type AccountGrants = components["schemas"]["ListGrantsResponse"];
export type CreditGrant = components["schemas"]["CreditGrant"];
export type PlanAllowance = components["schemas"]["PlanAllowance"];

export type UserdClient = Client<paths>;

export interface UserdClientOptions {
  /** Where userd's HTTP API is, e.g. "https://users.example.com" (no trailing /v1). */
  baseUrl: string;
  /**
   * Returns the bearer token of each request: Clerk's getToken() for the
   * signed-in user (from useAuth() or auth()), or a service token. Return
   * null to send none, e.g. for a same-origin frontend that relies on the
   * __session cookie.
   */
  getToken?: () => Promise<string | null | undefined> | string | null | undefined;
  /** fetch to use (default: the global one). */
  fetch?: typeof globalThis.fetch;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
}

/** Returns a typed client of userd's HTTP API. */
export function createUserdClient(options: UserdClientOptions): UserdClient {
  const client = createClient<paths>({
    baseUrl: options.baseUrl.replace(/\/+$/, ""),
    fetch: options.fetch,
    headers: options.headers,
  });
  const getToken = options.getToken;
  if (getToken) {
    const auth: Middleware = {
      async onRequest({ request }) {
        const token = await getToken();
        if (token) {
          request.headers.set("Authorization", `Bearer ${token}`);
        }
        return request;
      },
    };
    client.use(auth);
  }
  return client;
}

/** The ErrorInfo detail of an error, if it has one. */
export function errorInfo(error: Status | undefined): ErrorInfo | undefined {
  for (const d of error?.details ?? []) {
    if (d["@type"] === "type.googleapis.com/google.rpc.ErrorInfo") {
      return d as ErrorInfo;
    }
  }
  return undefined;
}

/** The stable reason of an error (e.g. "INSUFFICIENT_CREDITS"), or undefined. */
export function errorReason(error: Status | undefined): string | undefined {
  return errorInfo(error)?.reason;
}

/**
 * For a 402 answer to a deduction: how many credits it needed and how
 * many the user has (as bigint: credits are 64-bit). Otherwise undefined.
 */
export function insufficientCredits(
  error: Status | undefined,
): { required: bigint; available: bigint } | undefined {
  const info = errorInfo(error);
  if (info?.reason !== "INSUFFICIENT_CREDITS") {
    return undefined;
  }
  return {
    required: BigInt(info.metadata?.["required"] ?? "0"),
    available: BigInt(info.metadata?.["available"] ?? "0"),
  };
}

/**
 * For a 402 answer to a deduction from an organization's account: the
 * member's spending cap for the period leaves too little. The figures are
 * bigint (credits are 64-bit); period is "day", "week" or "month" (UTC).
 * Otherwise undefined.
 */
export function memberCapReached(
  error: Status | undefined,
): { cap: bigint; spent: bigint; remaining: bigint; required: bigint; period: string } | undefined {
  const info = errorInfo(error);
  if (info?.reason !== "MEMBER_CAP_REACHED") {
    return undefined;
  }
  const n = (k: string) => BigInt(info.metadata?.[k] ?? "0");
  return {
    cap: n("cap"),
    spent: n("spent"),
    remaining: n("remaining"),
    required: n("required"),
    period: info.metadata?.["period"] ?? "",
  };
}

/**
 * Whether a 403 answer refuses an organization's account to the caller
 * (not a member, a permission missing, another organization active in the
 * session, an impersonation session): the reason says which.
 */
export function isOrganizationRefusal(error: Status | undefined): boolean {
  const r = errorReason(error);
  return (
    r === "NOT_ORGANIZATION_MEMBER" ||
    r === "MISSING_ORGANIZATION_PERMISSION" ||
    r === "ORGANIZATION_NOT_ACTIVE" ||
    r === "IMPERSONATION_NOT_ALLOWED"
  );
}

/**
 * Whether a 400 answer says the action is not in the price list (a
 * deduction or can-afford check by action). Nothing was changed.
 */
export function isUnknownAction(error: Status | undefined): boolean {
  return errorReason(error) === "UNKNOWN_ACTION";
}

/** The invalid fields of a 400 answer. */
export function fieldViolations(error: Status | undefined): { field: string; description: string }[] {
  const out: { field: string; description: string }[] = [];
  for (const d of error?.details ?? []) {
    if (d["@type"] === "type.googleapis.com/google.rpc.BadRequest") {
      for (const v of (d as BadRequest).fieldViolations) {
        out.push({ field: v.field, description: v.description });
      }
    }
  }
  return out;
}

/**
 * Whether the user can spend n credits now. (A deduction can still be
 * refused if another lands first; the server decides.)
 */
export function hasCredits(user: Pick<User, "credits">, n: number | bigint): boolean {
  return BigInt(user.credits) >= BigInt(n);
}

/**
 * Whether the user (or an account) is on a paid plan (PRO or ENTERPRISE);
 * false for undefined, such as the user of an organization's SetPlan
 * response (which carries the account instead).
 */
export function isProOrHigher(user: Pick<User, "plan"> | undefined): boolean {
  return user?.plan === "PLAN_PRO" || user?.plan === "PLAN_ENTERPRISE";
}
