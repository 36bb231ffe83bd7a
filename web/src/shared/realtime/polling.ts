// Polling with backoff: fast while something is changing, slower the longer nothing
// does, and never faster than the server can comfortably answer.

/** Interval (ms) for the nth poll since the last change: 1 s, 2 s, 4 s … capped. */
export function backoffInterval(pollsSinceChange: number, minMs = 1000, maxMs = 15_000): number {
  return Math.min(maxMs, minMs * 2 ** Math.max(0, pollsSinceChange));
}
