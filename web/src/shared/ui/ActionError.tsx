import type { ReactNode } from "react";
import { describeError, toApiError } from "../data/errors";
import { CopyButton } from "./CopyButton";

/**
 * A failed action, next to the form or button that caused it: what happened, what to
 * do (with `next`, e.g. a link to Billing), and the correlation id for support.
 * `title`/`advice` replace the generic words when the page knows better (a refund
 * window, say); `what` names the action ("Export"). With `shownAtField` the message is
 * already under the field it names, so only the correlation id is added here.
 */
export function ActionError({
  error,
  what,
  title,
  advice,
  next,
  testId,
  showMessage = true,
  shownAtField = false,
}: {
  error: unknown;
  what?: string;
  title?: string;
  advice?: string;
  next?: ReactNode;
  testId?: string;
  showMessage?: boolean;
  shownAtField?: boolean;
}) {
  if (error === null || error === undefined) return null;
  const apiError = toApiError(error);
  if (shownAtField) {
    return apiError.correlationId ? (
      <p className="correlation" role="alert">
        {what ? `${what}. ` : ""}Correlation id: <code data-testid="correlation-id">{apiError.correlationId}</code>
      </p>
    ) : null;
  }
  const words = describeError(apiError);
  const heading = title ?? words.title;
  return (
    <div className="form-error" role="alert" data-error-code={apiError.code} data-testid={testId}>
      <p>
        <strong>{what ? `${what}: ${heading}` : heading}</strong>
      </p>
      {showMessage && apiError.message && apiError.message !== heading ? <p>{apiError.message}</p> : null}
      <p>{advice ?? words.advice}</p>
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
