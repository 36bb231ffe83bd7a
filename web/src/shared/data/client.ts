// The one HTTP client of the portal: a typed openapi-fetch client over a fetch that
// carries the in-memory access token, refreshes it once on expiry (single flight,
// through the httpOnly refresh cookie), and turns every failure into an ApiError.

import createClient from "openapi-fetch";
import type { paths } from "../api/schema";
import { ApiError, errorFromResponse, networkError } from "./errors";

/** The header the session endpoints require: it forces a CORS preflight elsewhere. */
export const PORTAL_CLIENT_HEADER = { "X-Gpuaas-Client": "portal" } as const;

export interface BrowserSession {
  access_token: string;
  token_type: string;
  expires_in: number;
}

type SessionListener = (signedIn: boolean) => void;

/**
 * Holds the access token in memory only (never in storage, never in a URL) and
 * knows how to get a new one from the refresh cookie.
 */
export class TokenStore {
  private accessToken: string | null = null;
  private expiresAt = 0;
  private refreshing: Promise<boolean> | null = null;
  private listeners = new Set<SessionListener>();

  constructor(
    private readonly baseFetch: typeof fetch,
    private readonly now: () => number = Date.now,
  ) {}

  get token(): string | null {
    return this.accessToken;
  }

  /** Seconds until the access token expires; 0 when there is none. */
  get secondsLeft(): number {
    return this.accessToken === null ? 0 : Math.max(0, Math.floor((this.expiresAt - this.now()) / 1000));
  }

  accept(session: BrowserSession): void {
    const wasSignedIn = this.accessToken !== null;
    this.accessToken = session.access_token;
    this.expiresAt = this.now() + session.expires_in * 1000;
    if (!wasSignedIn) this.emit(true);
  }

  clear(): void {
    const wasSignedIn = this.accessToken !== null;
    this.accessToken = null;
    this.expiresAt = 0;
    if (wasSignedIn) this.emit(false);
  }

  onChange(listener: SessionListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Exchanges the refresh cookie for a new access token. Concurrent callers share
   * one request: the server rotates the refresh token, so a second parallel refresh
   * would present a revoked cookie and sign the user out.
   */
  refresh(): Promise<boolean> {
    if (this.refreshing === null) {
      this.refreshing = acrossTabs(() => this.doRefresh()).finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  private async doRefresh(): Promise<boolean> {
    let response: Response;
    try {
      response = await this.baseFetch("/api/v1/auth/session/refresh", {
        method: "POST",
        credentials: "same-origin",
        headers: { ...PORTAL_CLIENT_HEADER, "Content-Type": "application/json" },
        body: "{}",
      });
    } catch (cause) {
      throw networkError(cause);
    }
    if (response.ok) {
      this.accept((await response.json()) as BrowserSession);
      return true;
    }
    if (response.status === 401 || response.status === 403) {
      this.clear();
      return false;
    }
    throw await errorFromResponse(response);
  }

  private emit(signedIn: boolean): void {
    for (const listener of this.listeners) listener(signedIn);
  }
}

/**
 * Runs a refresh under a lock shared by every tab of this origin. The cookie is shared
 * too: a second tab refreshing with a cookie the first just rotated would look like
 * token theft to the server, which then revokes every session of the user. Waiting
 * for the lock means the second tab sends the new cookie.
 */
function acrossTabs<T>(work: () => Promise<T>): Promise<T> {
  const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
  if (locks === undefined) return work();
  return locks.request("gpuaas-session-refresh", work) as Promise<T>;
}

/** 401 codes that a fresh access token can cure. */
const REFRESHABLE = new Set(["token_expired", "token_invalid", "token_missing"]);

/**
 * A fetch that authenticates with the in-memory token. On a 401 that a refresh can
 * cure it refreshes once and replays the request; a request body is buffered first
 * so it can be sent twice.
 */
export function authenticatedFetch(tokens: TokenStore, baseFetch: typeof fetch): typeof fetch {
  return async (input, init) => {
    const request = new Request(input, init);
    const body = request.body === null ? null : await request.arrayBuffer();
    const send = (token: string | null): Promise<Response> => {
      const headers = new Headers(request.headers);
      if (token !== null) headers.set("Authorization", `Bearer ${token}`);
      return baseFetch(request.url, {
        method: request.method,
        headers,
        body,
        credentials: "same-origin",
        signal: request.signal,
      });
    };
    let response: Response;
    try {
      response = await send(tokens.token);
    } catch (cause) {
      if (cause instanceof DOMException && cause.name === "AbortError") throw cause;
      throw networkError(cause);
    }
    if (response.status !== 401) return response;
    const error = await errorFromResponse(response);
    if (!REFRESHABLE.has(error.code)) return response;
    if (!(await tokens.refresh())) return response;
    try {
      return await send(tokens.token);
    } catch (cause) {
      throw networkError(cause);
    }
  };
}

export function createApi(tokens: TokenStore, baseFetch: typeof fetch, baseUrl = "") {
  return createClient<paths>({ baseUrl, fetch: authenticatedFetch(tokens, baseFetch) });
}

export type Api = ReturnType<typeof createApi>;

/**
 * Unwraps an openapi-fetch result: the data on success, an ApiError otherwise. Every
 * page goes through this, so error handling lives in one place.
 */
export async function unwrap<T>(
  pending: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  const { data, error, response } = await pending;
  if (response.ok) return data as T;
  throw await errorFromResponse(response, error);
}

/** A new idempotency key for one user action (reuse it when that action is retried). */
export function idempotencyKey(): string {
  return crypto.randomUUID();
}

/**
 * How TanStack Query retries: never a 4xx the user must fix, a 429 after the time the
 * server asked for (when short), network and 5xx failures with backoff.
 */
export function shouldRetry(failureCount: number, error: unknown): boolean {
  if (!(error instanceof ApiError)) return failureCount < 2;
  if (error.status === 429) return failureCount < 2 && (error.retryAfterSeconds ?? 1) <= 10;
  if (error.status === 0 || error.status >= 500) return failureCount < 3;
  return false;
}

export function retryDelay(failureCount: number, error: unknown): number {
  if (error instanceof ApiError && error.retryAfterSeconds !== null) return error.retryAfterSeconds * 1000;
  return Math.min(1000 * 2 ** failureCount, 15_000);
}

/** Session endpoints: the portal's sign-in, silent refresh and sign-out. */
export async function sessionLogin(baseFetch: typeof fetch, email: string, password: string): Promise<BrowserSession> {
  return sessionPost(baseFetch, "/api/v1/auth/session/login", { email, password });
}

export async function sessionOidcExchange(baseFetch: typeof fetch, code: string, state: string): Promise<BrowserSession> {
  return sessionPost(baseFetch, "/api/v1/auth/session/oidc/exchange", { code, state });
}

export async function sessionLogout(baseFetch: typeof fetch): Promise<void> {
  let response: Response;
  try {
    response = await baseFetch("/api/v1/auth/session/logout", {
      method: "POST",
      credentials: "same-origin",
      headers: { ...PORTAL_CLIENT_HEADER, "Content-Type": "application/json" },
      body: "{}",
    });
  } catch (cause) {
    throw networkError(cause);
  }
  if (!response.ok) throw await errorFromResponse(response);
}

async function sessionPost<T>(baseFetch: typeof fetch, path: string, body: unknown): Promise<T> {
  let response: Response;
  try {
    response = await baseFetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { ...PORTAL_CLIENT_HEADER, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (cause) {
    throw networkError(cause);
  }
  if (!response.ok) throw await errorFromResponse(response);
  return (await response.json()) as T;
}

export { ApiError };
