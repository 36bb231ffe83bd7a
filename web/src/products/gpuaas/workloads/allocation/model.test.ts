import { describe, expect, it } from "vitest";
import {
  BackoffTracker,
  balanceLevel,
  buildTimeline,
  burnRatePerHour,
  canRelease,
  expectedNext,
  secondsLeft,
  statusAnnouncement,
  type Allocation,
} from "./model";

function allocation(overrides: Partial<Allocation> = {}): Allocation {
  return {
    id: "alc_1",
    tenant_id: "t",
    project_id: "p",
    user_id: "u",
    sku_id: "sku_1",
    gpu_count: 2,
    status: "requested",
    node_id: "n",
    gpu_indices: [0, 1],
    price_per_gpu_hour_minor: 250,
    hourly_cost_minor: 500,
    currency: "USD",
    accrued_cost_minor: 0,
    correlation_id: "c",
    created_at: "2025-01-01T00:00:00Z",
    updated_at: "2025-01-01T00:00:00Z",
    ...overrides,
  };
}

describe("burn rate and time left", () => {
  it("sums the hourly cost of live allocations only", () => {
    const items = [
      allocation({ status: "active", hourly_cost_minor: 500 }),
      allocation({ status: "provisioning", hourly_cost_minor: 300 }),
      allocation({ status: "releasing", hourly_cost_minor: 100 }),
      allocation({ status: "released", hourly_cost_minor: 1000 }),
      allocation({ status: "failed", hourly_cost_minor: 1000 }),
      allocation({ status: "release_failed", hourly_cost_minor: 1000 }),
    ];
    expect(burnRatePerHour(items)).toBe(900);
  });

  it("divides the balance by the rate", () => {
    expect(secondsLeft(1000, 500)).toBe(7200);
    expect(secondsLeft(1000, 0)).toBeNull();
    expect(secondsLeft(0, 500)).toBe(0);
    expect(secondsLeft(-5, 500)).toBe(0);
  });

  it("warns when the balance is empty or lasts less than a day", () => {
    expect(balanceLevel(0, 0)).toBe("empty");
    expect(balanceLevel(-1, 100)).toBe("empty");
    expect(balanceLevel(100, 100)).toBe("low");
    expect(balanceLevel(100 * 24, 100)).toBe("ok");
    expect(balanceLevel(1, 0)).toBe("ok");
  });
});

describe("timeline", () => {
  it("lists transitions then the expected steps as pending", () => {
    const items = buildTimeline(
      allocation({
        status: "provisioning",
        transitions: [
          { from: null, to: "requested", actor: "user:u", correlation_id: "c1", at: "2025-01-01T00:00:00Z" },
          { from: "requested", to: "provisioning", actor: "system", correlation_id: "c2", at: "2025-01-01T00:00:05Z", reason: "placed" },
        ],
      }),
    );
    expect(items.map((i) => [i.status, i.done])).toEqual([
      ["requested", true],
      ["provisioning", true],
      ["active", false],
    ]);
    expect(items[1]).toMatchObject({ actor: "system", reason: "placed", correlationId: "c2" });
  });

  it("falls back to the status timestamps", () => {
    const items = buildTimeline(
      allocation({ status: "active", provisioning_at: "2025-01-01T00:00:02Z", active_at: "2025-01-01T00:01:00Z" }),
    );
    expect(items.map((i) => i.status)).toEqual(["requested", "provisioning", "active"]);
    expect(items.every((i) => i.done)).toBe(true);
  });

  it("expects nothing after a terminal status", () => {
    expect(expectedNext("released")).toEqual([]);
    expect(expectedNext("failed")).toEqual([]);
    expect(expectedNext("requested")).toEqual(["provisioning", "active"]);
    expect(expectedNext("releasing")).toEqual(["released"]);
  });
});

describe("statuses", () => {
  it("allows release from active and release_failed only", () => {
    expect(canRelease("active")).toBe(true);
    expect(canRelease("release_failed")).toBe(true);
    expect(canRelease("releasing")).toBe(false);
    expect(canRelease("provisioning")).toBe(false);
  });

  it("announces in words", () => {
    expect(statusAnnouncement("active")).toBe("Allocation is now active");
  });
});

describe("BackoffTracker", () => {
  it("backs off while the status stays, resets on change, stops at a terminal status", () => {
    const tracker = new BackoffTracker(1000, 15_000);
    expect(tracker.interval(1, "requested", false)).toBe(1000);
    // The same answer asked about again does not count twice.
    expect(tracker.interval(1, "requested", false)).toBe(1000);
    expect(tracker.interval(2, "requested", false)).toBe(2000);
    expect(tracker.interval(3, "requested", false)).toBe(4000);
    expect(tracker.interval(4, "provisioning", false)).toBe(1000);
    for (let t = 5; t < 15; t++) tracker.interval(t, "provisioning", false);
    expect(tracker.interval(15, "provisioning", false)).toBe(15_000);
    expect(tracker.interval(16, "released", true)).toBe(false);
  });
});
