// Allocation statuses, costs and the lifecycle timeline: pure functions, tested.

import { backoffInterval } from "../../../../shared/realtime/polling";
import type { components } from "../../../../shared/api/schema";

export type Allocation = components["schemas"]["Allocation"];
export type AllocationStatus = components["schemas"]["AllocationStatus"];
export type Transition = components["schemas"]["Transition"];
export type Balance = components["schemas"]["Balance"];

/** Every status the API uses, in lifecycle order. */
export const ALLOCATION_STATUSES: readonly AllocationStatus[] = [
  "requested",
  "provisioning",
  "active",
  "releasing",
  "released",
  "failed",
  "release_failed",
];

/** Statuses that hold GPUs (and will be, or are, billed). */
export const LIVE_STATUSES: readonly AllocationStatus[] = ["requested", "provisioning", "active", "releasing"];

/** Statuses the platform is still working on: worth polling. */
export const TRANSITIONAL_STATUSES: readonly AllocationStatus[] = ["requested", "provisioning", "releasing"];

/** Statuses nothing happens after. */
export const TERMINAL_STATUSES: readonly AllocationStatus[] = ["released", "failed"];

export function isLive(status: AllocationStatus): boolean {
  return LIVE_STATUSES.includes(status);
}

export function isTransitional(status: AllocationStatus): boolean {
  return TRANSITIONAL_STATUSES.includes(status);
}

export function isTerminal(status: AllocationStatus): boolean {
  return TERMINAL_STATUSES.includes(status);
}

/** "release_failed" → "Release failed". */
export function statusLabel(status: string): string {
  const words = status.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** What a person is told when an allocation changes status. */
export function statusAnnouncement(status: AllocationStatus): string {
  switch (status) {
    case "release_failed":
      return "Allocation release failed";
    default:
      return `Allocation is now ${status.replace(/_/g, " ")}`;
  }
}

export function canRelease(status: AllocationStatus): boolean {
  return status === "active" || status === "release_failed";
}

/** A name to show: the given one, else the id. */
export function allocationLabel(allocation: Pick<Allocation, "id" | "name">): string {
  return allocation.name && allocation.name.trim() !== "" ? allocation.name : allocation.id;
}

/** Sum of the hourly cost of live allocations, per hour, in minor units. */
export function burnRatePerHour(allocations: readonly Pick<Allocation, "status" | "hourly_cost_minor">[]): number {
  return allocations.filter((a) => isLive(a.status)).reduce((sum, a) => sum + a.hourly_cost_minor, 0);
}

/**
 * Seconds the balance lasts at `perHourMinor`; null when nothing is burning. A balance
 * at or below zero lasts 0 s.
 */
export function secondsLeft(balanceMinor: number, perHourMinor: number): number | null {
  if (perHourMinor <= 0) return null;
  if (balanceMinor <= 0) return 0;
  return (balanceMinor / perHourMinor) * 3600;
}

/** Below this much runtime left the dashboard warns. */
export const LOW_BALANCE_SECONDS = 24 * 3600;

export type BalanceLevel = "empty" | "low" | "ok";

export function balanceLevel(balanceMinor: number, perHourMinor: number): BalanceLevel {
  if (balanceMinor <= 0) return "empty";
  const left = secondsLeft(balanceMinor, perHourMinor);
  return left !== null && left < LOW_BALANCE_SECONDS ? "low" : "ok";
}

export interface TimelineItem {
  key: string;
  status: AllocationStatus;
  /** False for an expected step that has not happened yet. */
  done: boolean;
  at?: string;
  from?: AllocationStatus | null;
  actor?: string;
  reason?: string | null;
  correlationId?: string;
}

/** The steps still expected after `status` on the normal path. */
export function expectedNext(status: AllocationStatus): AllocationStatus[] {
  switch (status) {
    case "requested":
      return ["provisioning", "active"];
    case "provisioning":
      return ["active"];
    case "releasing":
      return ["released"];
    default:
      return [];
  }
}

/**
 * The lifecycle: every recorded transition (oldest first), then the steps still
 * expected as pending items. Without transitions (list reads) the status timestamps
 * stand in for them.
 */
export function buildTimeline(allocation: Allocation): TimelineItem[] {
  const transitions = allocation.transitions ?? [];
  let done: TimelineItem[];
  if (transitions.length > 0) {
    done = transitions.map((t, index) => ({
      key: `t${index}`,
      status: t.to,
      done: true,
      at: t.at,
      from: t.from ?? null,
      actor: t.actor,
      reason: t.reason ?? null,
      correlationId: t.correlation_id,
    }));
  } else {
    const stamps: [AllocationStatus, string | null | undefined][] = [
      ["requested", allocation.created_at],
      ["provisioning", allocation.provisioning_at],
      ["active", allocation.active_at],
      ["releasing", allocation.releasing_at],
      ["release_failed", allocation.release_failed_at],
      ["released", allocation.released_at],
      ["failed", allocation.failed_at],
    ];
    done = stamps
      .filter((entry): entry is [AllocationStatus, string] => typeof entry[1] === "string" && entry[1] !== "")
      .sort((a, b) => Date.parse(a[1]) - Date.parse(b[1]))
      .map(([status, at]) => ({ key: `s-${status}`, status, done: true, at }));
  }
  const pending = expectedNext(allocation.status).map((status) => ({ key: `p-${status}`, status, done: false }));
  return [...done, ...pending];
}

/**
 * Polling with backoff for one resource: fast after each change of status, slower the
 * longer it stays the same, stopped at a terminal status. `interval` is called by
 * TanStack Query whenever the query updates; it counts each new answer once.
 */
export class BackoffTracker {
  private updatedAt = -1;
  private status: string | undefined = undefined;
  private polls = 0;

  constructor(
    private readonly minMs = 1000,
    private readonly maxMs = 15_000,
  ) {}

  interval(updatedAt: number, status: string | undefined, terminal: boolean): number | false {
    if (updatedAt !== this.updatedAt) {
      this.polls = status !== this.status ? 0 : this.polls + 1;
      this.updatedAt = updatedAt;
      this.status = status;
    }
    if (terminal) return false;
    return backoffInterval(this.polls, this.minMs, this.maxMs);
  }

  get pollsSinceChange(): number {
    return this.polls;
  }
}
