import { useState } from "react";

/**
 * Cursor pagination: the API answers `next_cursor`; we keep the cursors of pages
 * already seen so "Previous" works without the server knowing about pages.
 */
export function useCursorPager() {
  const [cursors, setCursors] = useState<(string | null)[]>([null]);
  const cursor = cursors[cursors.length - 1] ?? null;
  return {
    cursor,
    page: cursors.length,
    next: (nextCursor: string) => setCursors((all) => [...all, nextCursor]),
    previous: () => setCursors((all) => (all.length > 1 ? all.slice(0, -1) : all)),
    reset: () => setCursors([null]),
  };
}

export function Pager({
  pager,
  nextCursor,
  label,
}: {
  pager: ReturnType<typeof useCursorPager>;
  nextCursor: string | null | undefined;
  label: string;
}) {
  if (pager.page === 1 && !nextCursor) return null;
  return (
    <nav className="pager" aria-label={`${label} pages`}>
      <button type="button" className="button" onClick={pager.previous} disabled={pager.page === 1}>
        Previous
      </button>
      <span>Page {pager.page}</span>
      <button type="button" className="button" onClick={() => nextCursor && pager.next(nextCursor)} disabled={!nextCursor}>
        Next
      </button>
    </nav>
  );
}
