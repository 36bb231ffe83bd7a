// The compute catalogue as users see it: SKUs and the free GPUs of active nodes.
// Shared by the Capacity page and the allocation pages (same product).

import { useQuery } from "@tanstack/react-query";
import type { components } from "../../../shared/api/schema";
import { useApi } from "../../../shared/data/ApiContext";
import { unwrap } from "../../../shared/data/client";

export type Sku = components["schemas"]["Sku"];
export type NodeSummary = components["schemas"]["NodeSummary"];

export const SKUS_KEY = ["catalog", "skus"] as const;
export const NODES_KEY = ["catalog", "nodes"] as const;

/** Active SKUs; they change rarely, so they are cached for a while. */
export function useSkus() {
  const api = useApi();
  return useQuery({
    queryKey: SKUS_KEY,
    queryFn: () => unwrap(api.GET("/api/v1/skus")),
    staleTime: 60_000,
  });
}

/** Nodes with their occupancy; refreshed every `refreshMs` while the page is open. */
export function useNodeSummaries(refreshMs: number | false = false) {
  const api = useApi();
  return useQuery({
    queryKey: NODES_KEY,
    queryFn: () => unwrap(api.GET("/api/v1/nodes")),
    refetchInterval: refreshMs,
  });
}

/** Free capacity of one SKU, counted over `active` nodes only. */
export interface SkuCapacity {
  /** GPUs free now, summed over active nodes. */
  gpusFree: number;
  /** GPUs on active nodes, free or not. */
  gpusTotal: number;
  /** Active nodes of this SKU. */
  activeNodes: number;
  /** Nodes of this SKU that do not take work now (draining, offline…). */
  unavailableNodes: number;
  /** The most GPUs free on one node: an allocation lives on one node. */
  largestFreeOnOneNode: number;
}

const NO_CAPACITY: SkuCapacity = { gpusFree: 0, gpusTotal: 0, activeNodes: 0, unavailableNodes: 0, largestFreeOnOneNode: 0 };

/** Aggregates node occupancy per SKU name; only `active` nodes count as available. */
export function capacityBySku(nodes: readonly NodeSummary[]): Map<string, SkuCapacity> {
  const bySku = new Map<string, SkuCapacity>();
  for (const node of nodes) {
    const current = bySku.get(node.sku_name) ?? { ...NO_CAPACITY };
    if (node.status === "active") {
      const free = Math.max(0, node.occupancy.gpus_free);
      current.gpusFree += free;
      current.gpusTotal += Math.max(0, node.occupancy.gpus_total);
      current.activeNodes += 1;
      current.largestFreeOnOneNode = Math.max(current.largestFreeOnOneNode, free);
    } else {
      current.unavailableNodes += 1;
    }
    bySku.set(node.sku_name, current);
  }
  return bySku;
}

export function capacityOf(capacity: Map<string, SkuCapacity>, skuName: string): SkuCapacity {
  return capacity.get(skuName) ?? NO_CAPACITY;
}

/** SKUs by id and by name, for tables that only carry `sku_id`. */
export function skuIndex(skus: readonly Sku[]): Map<string, Sku> {
  const index = new Map<string, Sku>();
  for (const sku of skus) {
    index.set(sku.id, sku);
    index.set(sku.name, sku);
  }
  return index;
}

/** 81920 MiB → "80 GiB", 1048576 MiB → "1 TiB"; one decimal when not whole. */
export function formatMib(mib: number): string {
  const gib = mib / 1024;
  const [value, unit] = gib >= 1024 ? [gib / 1024, "TiB"] : [gib, "GiB"];
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${unit}`;
}

export function formatBytes(bytes: number): string {
  return formatMib(bytes / (1024 * 1024));
}
