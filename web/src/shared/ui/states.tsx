import type { ReactNode } from "react";
import { ApiError, describeError } from "../data/errors";
import { CopyButton } from "./CopyButton";

export function Loading({ label = "Loading" }: { label?: string }) {
  return (
    <div className="state state-loading" role="status" aria-live="polite" aria-busy="true">
      <span className="spinner" aria-hidden="true" />
      {label}…
    </div>
  );
}

export function Empty({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="state state-empty">
      <p className="state-title">{title}</p>
      {children}
    </div>
  );
}

/**
 * Any failure, in words: what happened, what to do, and the correlation id support
 * needs. 403, 404, 409 and 429 read differently; a retry button when retrying helps.
 */
export function ErrorPanel({ error, onRetry }: { error: unknown; onRetry?: () => void }) {
  const apiError =
    error instanceof ApiError
      ? error
      : new ApiError({ status: -1, code: "client_error", message: error instanceof Error ? error.message : String(error) });
  const { title, advice } = describeError(apiError);
  const kind =
    apiError.status === 403
      ? "forbidden"
      : apiError.status === 404
        ? "not-found"
        : apiError.status === 409
          ? "conflict"
          : apiError.status === 429
            ? "rate-limited"
            : "error";
  return (
    <div className={`state state-error state-${kind}`} role="alert" data-error-code={apiError.code}>
      <p className="state-title">{title}</p>
      <p>{apiError.message}</p>
      <p>{advice}</p>
      {apiError.correlationId ? (
        <p className="correlation">
          Correlation id: <code data-testid="correlation-id">{apiError.correlationId}</code>{" "}
          <CopyButton text={apiError.correlationId} label="Copy correlation id" />
        </p>
      ) : null}
      {onRetry && apiError.status !== 403 && apiError.status !== 404 ? (
        <button type="button" className="button" onClick={onRetry}>
          Try again
        </button>
      ) : null}
    </div>
  );
}

/** Loading, error, empty or the content, for one query. */
export function QueryView<T>({
  query,
  isEmpty,
  empty,
  loadingLabel,
  children,
}: {
  query: { data: T | undefined; error: unknown; isPending: boolean; refetch: () => unknown };
  isEmpty?: (data: T) => boolean;
  empty?: ReactNode;
  loadingLabel?: string;
  children: (data: T) => ReactNode;
}) {
  if (query.isPending) return <Loading label={loadingLabel} />;
  if (query.error && query.data === undefined) return <ErrorPanel error={query.error} onRetry={() => void query.refetch()} />;
  if (query.data === undefined) return <Loading label={loadingLabel} />;
  if (isEmpty?.(query.data)) return <>{empty}</>;
  return <>{children(query.data)}</>;
}
