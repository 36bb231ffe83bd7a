import { useMemo, useRef } from "react";
import { idempotencyKey } from "./client";

/**
 * One idempotency key per user action: asking again with the same request (a retry
 * after a timeout) reuses the key, so the server replays instead of acting twice; a
 * changed request gets a new key (the server refuses a reused key with a different
 * body). Call `reset()` once the action has succeeded.
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
