import type { ReactNode } from "react";
import { describeError, toApiError } from "../data/errors";
import { CopyButton } from "./CopyButton";

/**
 * A failed action, next to the form or button that caused it: what happened, what to
 * do (with `next`, e.g. a link to Billing), and the correlation id for support.
 */
export function ActionError({ error, next, testId }: { error: unknown; next?: ReactNode; testId?: string }) {
  const apiError = toApiError(error);
  const { title, advice } = describeError(apiError);
  return (
    <div className="form-error" role="alert" data-error-code={apiError.code} data-testid={testId}>
      <p>
        <strong>{title}</strong>
      </p>
      {apiError.message && apiError.message !== title ? <p>{apiError.message}</p> : null}
      <p>{advice}</p>
      {next ? <p>{next}</p> : null}
      {apiError.correlationId ? (
        <p className="correlation">
          Correlation id: <code data-testid="correlation-id">{apiError.correlationId}</code>{" "}
          <CopyButton text={apiError.correlationId} label="Copy correlation id" />
        </p>
      ) : null}
    </div>
  );
}
