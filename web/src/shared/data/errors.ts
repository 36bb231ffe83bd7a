// The error envelope every non-2xx answer carries, mapped to one type the UI shows.

export interface ErrorEnvelope {
  error: { code: string; message: string; correlation_id: string; details?: Record<string, unknown> };
}

/** What went wrong with one API call, in terms the UI can act on. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly correlationId: string | null;
  readonly details: Record<string, unknown>;
  /** Seconds to wait before trying again (429 and 503), from `Retry-After`. */
  readonly retryAfterSeconds: number | null;

  constructor(init: {
    status: number;
    code: string;
    message: string;
    correlationId?: string | null;
    details?: Record<string, unknown>;
    retryAfterSeconds?: number | null;
  }) {
    super(init.message);
    this.name = "ApiError";
    this.status = init.status;
    this.code = init.code;
    this.correlationId = init.correlationId ?? null;
    this.details = init.details ?? {};
    this.retryAfterSeconds = init.retryAfterSeconds ?? null;
  }

  /** The field a 400 names, when it names one. */
  get field(): string | null {
    const field = this.details["field"];
    return typeof field === "string" ? field : null;
  }

  get isNetwork(): boolean {
    return this.status === 0;
  }
}

/** An ApiError from any thrown value. */
export function toApiError(error: unknown): ApiError {
  return error instanceof ApiError
    ? error
    : new ApiError({ status: -1, code: "client_error", message: error instanceof Error ? error.message : String(error) });
}

/** The server's message when a 400 names one of `fields` (for `Field`'s `error`). */
export function fieldError(error: unknown, ...fields: string[]): string | null {
  if (!(error instanceof ApiError) || error.field === null) return null;
  return fields.includes(error.field) ? error.message : null;
}

/** `Retry-After` is either delta-seconds or an HTTP date. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (value === null || value.trim() === "") return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const date = Date.parse(value);
  if (Number.isNaN(date)) return null;
  return Math.max(0, Math.ceil((date - now) / 1000));
}

function isEnvelope(body: unknown): body is ErrorEnvelope {
  if (typeof body !== "object" || body === null) return false;
  const error = (body as { error?: unknown }).error;
  return (
    typeof error === "object" &&
    error !== null &&
    typeof (error as { code?: unknown }).code === "string" &&
    typeof (error as { message?: unknown }).message === "string"
  );
}

/**
 * Builds an ApiError from a failed response. The server always answers with the
 * envelope; anything else (a proxy's HTML page, an empty 502) still becomes a
 * readable error with whatever correlation id the headers carry.
 */
export async function errorFromResponse(response: Response, parsedBody?: unknown): Promise<ApiError> {
  let body = parsedBody;
  if (body === undefined) {
    try {
      body = await response.clone().json();
    } catch {
      body = undefined;
    }
  }
  const retryAfterSeconds = parseRetryAfter(response.headers.get("Retry-After"));
  const headerCorrelation = response.headers.get("X-Correlation-Id");
  if (isEnvelope(body)) {
    return new ApiError({
      status: response.status,
      code: body.error.code,
      message: body.error.message,
      correlationId: body.error.correlation_id || headerCorrelation,
      details: body.error.details ?? {},
      retryAfterSeconds,
    });
  }
  return new ApiError({
    status: response.status,
    code: response.status >= 500 ? "internal_error" : "unexpected_response",
    message: `The server answered ${response.status} ${response.statusText || ""}`.trim(),
    correlationId: headerCorrelation,
    retryAfterSeconds,
  });
}

export function networkError(cause: unknown): ApiError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new ApiError({
    status: 0,
    code: "network_error",
    message: `Could not reach the server (${detail}). Check your connection and try again.`,
  });
}

/** Words for the person looking at the screen: what happened and what to do next. */
export function describeError(error: ApiError): { title: string; advice: string } {
  switch (error.code) {
    case "insufficient_balance":
      return { title: "Your balance is too low", advice: "Top up your credit in Billing, then try again." };
    case "sku_unavailable":
      return {
        title: "No capacity for that request right now",
        advice: "Pick fewer GPUs or another SKU (Capacity shows what is free), or try again later.",
      };
    case "allocation_limit_reached":
      return {
        title: "You have reached your allocation limit",
        advice: "Release an allocation you no longer need, or ask an operator to raise the limit.",
      };
    case "allocation_invalid_transition":
      return { title: "That action is not possible in the current state", advice: "Refresh to see the latest status." };
    case "rate_limited":
      return {
        title: "Too many requests",
        advice:
          error.retryAfterSeconds !== null
            ? `Wait ${error.retryAfterSeconds} s before trying again.`
            : "Wait a moment before trying again.",
      };
    case "network_error":
      return { title: "The server could not be reached", advice: "Check your connection; we will keep trying." };
    default:
      break;
  }
  switch (error.status) {
    case 400:
      return { title: "Some input was not accepted", advice: error.field ? `Check the ${error.field} field.` : "Check the form and try again." };
    case 401:
      return { title: "Your session has ended", advice: "Sign in again." };
    case 402:
      return { title: "Payment required", advice: "Top up your credit in Billing." };
    case 403:
      return { title: "You do not have access to this", advice: "Ask an operator if you need it." };
    case 404:
      return { title: "Not found", advice: "It may have been removed, or the link is wrong." };
    case 409:
      return { title: "That conflicts with the current state", advice: "Refresh and try again." };
    case 429:
      return {
        title: "Too many requests",
        advice:
          error.retryAfterSeconds !== null
            ? `Wait ${error.retryAfterSeconds} s before trying again.`
            : "Wait a moment before trying again.",
      };
    default:
      return error.status >= 500
        ? { title: "Something went wrong on our side", advice: "Try again; if it keeps failing, contact support with the correlation id." }
        : { title: "The request failed", advice: "Try again." };
  }
}
