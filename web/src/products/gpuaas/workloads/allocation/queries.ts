// Queries the workload pages share. Keys start with "allocations" so one
// invalidation after a create or release refreshes every view of them.

import { useQuery } from "@tanstack/react-query";
import { useApi } from "../../../../shared/data/ApiContext";
import { unwrap, type Api } from "../../../../shared/data/client";
import { LIVE_STATUSES, type Allocation, type AllocationStatus } from "./model";

export const ALLOCATIONS_KEY = ["allocations"] as const;
export const BALANCE_KEY = ["billing", "balance"] as const;
export const SSH_KEYS_KEY = ["ssh-keys"] as const;

export function useBalance(refreshMs: number | false = false) {
  const api = useApi();
  return useQuery({
    queryKey: BALANCE_KEY,
    queryFn: () => unwrap(api.GET("/api/v1/billing/balance")),
    refetchInterval: refreshMs,
  });
}

/** The most the API returns in one page. */
const MAX_PAGE = 200;

export interface LiveAllocations {
  /** requested, provisioning, active and releasing; newest first. */
  live: Allocation[];
  /** Releases that failed and wait for a retry. */
  releaseFailed: Allocation[];
  /** True when some status had more than one page (only the first is shown). */
  truncated: boolean;
}

async function byStatus(api: Api, status: AllocationStatus) {
  return unwrap(api.GET("/api/v1/allocations", { params: { query: { status, limit: MAX_PAGE } } }));
}

/**
 * Every allocation that holds GPUs, plus failed releases. Live allocations are few
 * (concurrency caps), so one page per status holds them all.
 */
export function useLiveAllocations(refreshMs: number | false = false) {
  const api = useApi();
  return useQuery({
    queryKey: [...ALLOCATIONS_KEY, "live"],
    queryFn: async (): Promise<LiveAllocations> => {
      const [failed, ...pages] = await Promise.all([
        byStatus(api, "release_failed"),
        ...LIVE_STATUSES.map((status) => byStatus(api, status)),
      ]);
      // A status can change between the requests: keep each allocation once.
      const seen = new Set<string>();
      const live = pages
        .flatMap((page) => page.items)
        .filter((a) => (seen.has(a.id) ? false : (seen.add(a.id), true)))
        .sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
      const truncated = [failed, ...pages].some((page) => Boolean(page.next_cursor));
      return { live, releaseFailed: failed.items, truncated };
    },
    refetchInterval: refreshMs,
  });
}
