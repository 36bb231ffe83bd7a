import { describe, expect, it, vi } from "vitest";
import { ApiError, parseRetryAfter, describeError } from "./errors";
import { TokenStore, createApi, retryDelay, shouldRetry, unwrap } from "./client";

const BASE = "http://portal.test";

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

function envelope(code: string, message: string, correlation_id = "corr-1", details: Record<string, unknown> = {}) {
  return { error: { code, message, correlation_id, details } };
}

/** A fake server: routes by method + path, records what it saw. */
function fakeServer(handler: (request: Request) => Response | Promise<Response>) {
  const seen: Request[] = [];
  const fetcher = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = typeof input === "string" && input.startsWith("/") ? BASE + input : input;
    const request = new Request(url, init);
    seen.push(request.clone());
    return handler(request);
  });
  return { fetcher: fetcher as unknown as typeof fetch, seen };
}

describe("refresh flow", () => {
  it("sends the access token, refreshes once on token_expired and replays the request with its body", async () => {
    let refreshes = 0;
    const { fetcher, seen } = fakeServer(async (request) => {
      const path = new URL(request.url).pathname;
      if (path === "/api/v1/auth/session/refresh") {
        refreshes += 1;
        expect(request.headers.get("X-Gpuaas-Client")).toBe("portal");
        return json(200, { access_token: "fresh", token_type: "Bearer", expires_in: 900 });
      }
      if (request.headers.get("Authorization") !== "Bearer fresh") {
        return json(401, envelope("token_expired", "the access token has expired"));
      }
      const body = await request.json();
      return json(201, { name: body.name });
    });
    const tokens = new TokenStore(fetcher);
    tokens.accept({ access_token: "stale", token_type: "Bearer", expires_in: 900 });
    const api = createApi(tokens, fetcher, BASE);
    const created = await unwrap(
      api.POST("/api/v1/ssh-keys", { body: { name: "laptop", public_key: "ssh-ed25519 AAAA" } }),
    );
    expect(created).toEqual({ name: "laptop" });
    expect(refreshes).toBe(1);
    expect(tokens.token).toBe("fresh");
    const replays = seen.filter((r) => new URL(r.url).pathname === "/api/v1/ssh-keys");
    expect(replays.map((r) => r.headers.get("Authorization"))).toEqual(["Bearer stale", "Bearer fresh"]);
  });

  it("shares one refresh between concurrent requests (the server rotates the cookie)", async () => {
    let refreshes = 0;
    const { fetcher } = fakeServer(async (request) => {
      const path = new URL(request.url).pathname;
      if (path === "/api/v1/auth/session/refresh") {
        refreshes += 1;
        await new Promise((resolve) => setTimeout(resolve, 10));
        return json(200, { access_token: "fresh", token_type: "Bearer", expires_in: 900 });
      }
      if (request.headers.get("Authorization") !== "Bearer fresh") return json(401, envelope("token_expired", "expired"));
      return json(200, { amount_minor: 5, currency: "USD", tenant_id: "t" });
    });
    const tokens = new TokenStore(fetcher);
    tokens.accept({ access_token: "stale", token_type: "Bearer", expires_in: 900 });
    const api = createApi(tokens, fetcher, BASE);
    const results = await Promise.all(
      Array.from({ length: 5 }, () => unwrap(api.GET("/api/v1/billing/balance"))),
    );
    expect(results.every((r) => r.amount_minor === 5)).toBe(true);
    expect(refreshes).toBe(1);
  });

  it("signs out when the refresh cookie is refused, and surfaces the 401", async () => {
    const { fetcher } = fakeServer((request) => {
      const path = new URL(request.url).pathname;
      if (path === "/api/v1/auth/session/refresh") return json(401, envelope("invalid_credentials", "no session"));
      return json(401, envelope("token_expired", "expired", "corr-401"));
    });
    const tokens = new TokenStore(fetcher);
    const signedIn: boolean[] = [];
    tokens.onChange((value) => signedIn.push(value));
    tokens.accept({ access_token: "stale", token_type: "Bearer", expires_in: 900 });
    const api = createApi(tokens, fetcher, BASE);
    const error = await unwrap(api.GET("/api/v1/users/me")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).status).toBe(401);
    expect((error as ApiError).correlationId).toBe("corr-401");
    expect(tokens.token).toBeNull();
    expect(signedIn).toEqual([true, false]);
  });

  it("does not refresh on a 401 a new token cannot cure", async () => {
    let refreshes = 0;
    const { fetcher } = fakeServer((request) => {
      if (new URL(request.url).pathname === "/api/v1/auth/session/refresh") refreshes += 1;
      return json(401, envelope("invalid_credentials", "wrong password"));
    });
    const tokens = new TokenStore(fetcher);
    const api = createApi(tokens, fetcher, BASE);
    await expect(unwrap(api.GET("/api/v1/users/me"))).rejects.toMatchObject({ code: "invalid_credentials" });
    expect(refreshes).toBe(0);
  });
});

describe("error mapping", () => {
  it("maps the envelope: status, code, message, field, correlation id", async () => {
    const { fetcher } = fakeServer(() =>
      json(400, envelope("validation_error", "gpu_count must be 1 to 8", "corr-400", { field: "gpu_count" })),
    );
    const api = createApi(new TokenStore(fetcher), fetcher, BASE);
    const error = (await unwrap(
      api.POST("/api/v1/allocations", {
        body: { sku: "h100", gpu_count: 99, project_id: "p", ssh_key_ids: [] },
      }),
    ).catch((e: unknown) => e)) as ApiError;
    expect(error).toMatchObject({ status: 400, code: "validation_error", message: "gpu_count must be 1 to 8" });
    expect(error.field).toBe("gpu_count");
    expect(error.correlationId).toBe("corr-400");
    expect(describeError(error).advice).toContain("gpu_count");
  });

  it("turns a non-envelope failure (a proxy's HTML page) into a readable error", async () => {
    const { fetcher } = fakeServer(
      () => new Response("<html>Bad Gateway</html>", { status: 502, statusText: "Bad Gateway", headers: { "X-Correlation-Id": "corr-proxy" } }),
    );
    const api = createApi(new TokenStore(fetcher), fetcher, BASE);
    const error = (await unwrap(api.GET("/api/v1/skus")).catch((e: unknown) => e)) as ApiError;
    expect(error.status).toBe(502);
    expect(error.code).toBe("internal_error");
    expect(error.correlationId).toBe("corr-proxy");
    expect(shouldRetry(0, error)).toBe(true);
  });

  it("turns a network failure into status 0 with advice", async () => {
    const fetcher = vi.fn(async () => {
      throw new TypeError("Failed to fetch");
    }) as unknown as typeof fetch;
    const api = createApi(new TokenStore(fetcher), fetcher, BASE);
    const error = (await unwrap(api.GET("/api/v1/skus")).catch((e: unknown) => e)) as ApiError;
    expect(error.isNetwork).toBe(true);
    expect(describeError(error).title).toMatch(/could not be reached/);
  });

  it("explains 402, 409 and 429 in words with what to do next", () => {
    const make = (status: number, code: string) => new ApiError({ status, code, message: "m" });
    expect(describeError(make(402, "insufficient_balance")).advice).toMatch(/Top up/);
    expect(describeError(make(409, "sku_unavailable")).advice).toMatch(/fewer GPUs/);
    expect(describeError(make(429, "allocation_limit_reached")).advice).toMatch(/Release/);
  });
});

describe("429 handling", () => {
  it("reads Retry-After in seconds or as a date", () => {
    expect(parseRetryAfter("7")).toBe(7);
    expect(parseRetryAfter(null)).toBeNull();
    expect(parseRetryAfter("soon")).toBeNull();
    const now = Date.parse("2026-11-24T10:00:00Z");
    expect(parseRetryAfter("Tue, 24 Nov 2026 10:00:30 GMT", now)).toBe(30);
  });

  it("carries the retry time on the error and tells the user how long to wait", async () => {
    const { fetcher } = fakeServer(() => json(429, envelope("rate_limited", "slow down", "corr-429"), { "Retry-After": "3" }));
    const api = createApi(new TokenStore(fetcher), fetcher, BASE);
    const error = (await unwrap(api.GET("/api/v1/allocations")).catch((e: unknown) => e)) as ApiError;
    expect(error.status).toBe(429);
    expect(error.retryAfterSeconds).toBe(3);
    expect(describeError(error).advice).toBe("Wait 3 s before trying again.");
  });

  it("retries a short 429 after the server's delay, never a long one or a 4xx", () => {
    const short = new ApiError({ status: 429, code: "rate_limited", message: "m", retryAfterSeconds: 2 });
    const long = new ApiError({ status: 429, code: "rate_limited", message: "m", retryAfterSeconds: 120 });
    expect(shouldRetry(0, short)).toBe(true);
    expect(retryDelay(0, short)).toBe(2000);
    expect(shouldRetry(0, long)).toBe(false);
    expect(shouldRetry(0, new ApiError({ status: 404, code: "not_found", message: "m" }))).toBe(false);
    expect(shouldRetry(0, new ApiError({ status: 402, code: "insufficient_balance", message: "m" }))).toBe(false);
  });
});
