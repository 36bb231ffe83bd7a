// Form plumbing shared by the finance and operator pages: the error block shown
// next to a form, idempotency keys per user action, and correlation ids of answers.

import { useMemo, useRef } from "react";
import { idempotencyKey, unwrap } from "../../shared/data/client";
import { ApiError, describeError } from "../../shared/data/errors";
import { shortId } from "../../shared/i18n/format";
import { CopyButton } from "../../shared/ui/CopyButton";

export function toApiError(error: unknown): ApiError {
  return error instanceof ApiError
    ? error
    : new ApiError({ status: -1, code: "client_error", message: error instanceof Error ? error.message : String(error) });
}

/**
 * A failed action, next to the form or button that started it: what happened, what
 * to do, and the correlation id. `title`/`advice` replace the generic words when the
 * page knows better (e.g. a refund window).
 */
export function FormError({
  error,
  title,
  advice,
  showMessage = true,
}: {
  error: unknown;
  title?: string;
  advice?: string;
  showMessage?: boolean;
}) {
  const apiError = toApiError(error);
  const words = describeError(apiError);
  return (
    <div className="form-error" role="alert" data-error-code={apiError.code}>
      <p>
        <strong>{title ?? words.title}</strong>
      </p>
      {showMessage && apiError.message ? <p>{apiError.message}</p> : null}
      <p>{advice ?? words.advice}</p>
      {apiError.correlationId ? (
        <p className="correlation">
          Correlation id: <code data-testid="correlation-id">{apiError.correlationId}</code>{" "}
          <CopyButton text={apiError.correlationId} label="Copy correlation id" />
        </p>
      ) : null}
    </div>
  );
}

/**
 * One idempotency key per user action: asking again with the same request (a retry
 * after a timeout) reuses the key, so the server replays instead of acting twice;
 * a changed request gets a new key (the server refuses a reused key with a
 * different body). Call `reset()` once the action has succeeded.
 */
export function useActionKey() {
  const current = useRef<{ signature: string; key: string } | null>(null);
  return useMemo(
    () => ({
      keyFor(signature: string): string {
        if (current.current === null || current.current.signature !== signature) {
          current.current = { signature, key: idempotencyKey() };
        }
        return current.current.key;
      },
      reset(): void {
        current.current = null;
      },
    }),
    [],
  );
}

/** Like `unwrap`, and also returns the answer's correlation id (for the record). */
export async function unwrapWithCorrelation<T>(
  pending: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<{ data: T; correlationId: string | null }> {
  const result = await pending;
  const data = await unwrap(Promise.resolve(result));
  return { data, correlationId: result.response.headers.get("X-Correlation-Id") };
}

/**
 * A long id shown short ("0192a1b2…9f3e") while a screen reader (and a text search)
 * gets all of it.
 */
export function ShortId({ value, prefix }: { value: string; prefix?: string }) {
  return (
    <>
      <code aria-hidden="true" title={value}>
        {shortId(value)}
      </code>
      <span className="visually-hidden">
        {prefix ? `${prefix} ` : ""}
        {value}
      </span>
    </>
  );
}
