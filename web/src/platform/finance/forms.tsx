// Finance page plumbing: correlation ids of answers and short ids.

import { unwrap } from "../../shared/data/client";
import { shortId } from "../../shared/i18n/format";

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
