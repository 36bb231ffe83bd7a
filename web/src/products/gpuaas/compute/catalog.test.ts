import { describe, expect, it } from "vitest";
import { capacityBySku, capacityOf, formatBytes, formatMib, type NodeSummary } from "./catalog";

function node(sku: string, status: NodeSummary["status"], total: number, free: number): NodeSummary {
  return {
    id: `${sku}-${status}-${free}`,
    sku_name: sku,
    gpu_model: "H100",
    status,
    occupancy: { gpus_total: total, gpus_allocated: total - free, gpus_free: free },
  };
}

describe("capacityBySku", () => {
  it("counts free GPUs of active nodes only", () => {
    const capacity = capacityBySku([
      node("h100", "active", 8, 3),
      node("h100", "active", 8, 5),
      node("h100", "draining", 8, 8),
      node("h100", "offline", 8, 8),
      node("a100", "offline", 4, 4),
    ]);
    expect(capacityOf(capacity, "h100")).toEqual({
      gpusFree: 8,
      gpusTotal: 16,
      activeNodes: 2,
      unavailableNodes: 2,
      largestFreeOnOneNode: 5,
    });
    expect(capacityOf(capacity, "a100").gpusFree).toBe(0);
    expect(capacityOf(capacity, "missing").activeNodes).toBe(0);
  });
});

describe("memory", () => {
  it("formats MiB and bytes as GiB", () => {
    expect(formatMib(81920)).toBe("80 GiB");
    expect(formatMib(1536)).toBe("1.5 GiB");
    expect(formatBytes(2 * 1024 ** 4)).toBe("2 TiB");
    expect(formatBytes(1.5 * 1024 ** 4)).toBe("1.5 TiB");
  });
});
