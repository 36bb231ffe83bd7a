import { Link } from "react-router";
import { formatMoney } from "../../../shared/i18n/format";
import { Page } from "../../../shared/ui/Page";
import { Empty, ErrorPanel, QueryView } from "../../../shared/ui/states";
import { capacityBySku, capacityOf, formatBytes, formatMib, useNodeSummaries, useSkus, type Sku, type SkuCapacity } from "./catalog";

/** How often free GPUs are re-read while the page is open. */
const REFRESH_MS = 15_000;

function FreeCell({ sku, capacity, loaded }: { sku: Sku; capacity: SkuCapacity; loaded: boolean }) {
  if (!loaded) return <span className="muted">…</span>;
  if (capacity.activeNodes === 0) {
    return (
      <span data-testid={`free-gpus-${sku.name}`} data-free="0">
        0 <span className="muted">(no active node)</span>
      </span>
    );
  }
  return (
    <span data-testid={`free-gpus-${sku.name}`} data-free={capacity.gpusFree}>
      {capacity.gpusFree} of {capacity.gpusTotal}
      <span className="muted">
        {" "}
        · up to {capacity.largestFreeOnOneNode} on one node
      </span>
    </span>
  );
}

export default function CapacityPage() {
  const skus = useSkus();
  const nodes = useNodeSummaries(REFRESH_MS);
  const capacity = capacityBySku(nodes.data?.items ?? []);
  const nodesLoaded = nodes.data !== undefined;

  return (
    <Page title="Capacity">
      <p className="muted">
        GPU types on offer and the GPUs free right now on active nodes (refreshed every {REFRESH_MS / 1000} s). An
        allocation runs on one node, so it can use at most the GPUs free on one node.
      </p>
      {nodes.error && !nodesLoaded ? <ErrorPanel error={nodes.error} onRetry={() => void nodes.refetch()} /> : null}
      <QueryView
        query={skus}
        loadingLabel="Loading SKUs"
        isEmpty={(data) => data.items.length === 0}
        empty={
          <Empty title="No GPU types are on offer right now">
            <p>Check again later, or ask an operator.</p>
          </Empty>
        }
      >
        {(data) => (
          <div className="table-wrap">
            <table>
              <caption className="visually-hidden">GPU types, prices and free GPUs</caption>
              <thead>
                <tr>
                  <th scope="col">SKU</th>
                  <th scope="col">GPU model</th>
                  <th scope="col" className="num">
                    GPU memory
                  </th>
                  <th scope="col" className="num">
                    GPUs per node
                  </th>
                  <th scope="col">Node</th>
                  <th scope="col" className="num">
                    Price per GPU-hour
                  </th>
                  <th scope="col">GPUs free now</th>
                  <th scope="col">
                    <span className="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {data.items.map((sku) => {
                  const cap = capacityOf(capacity, sku.name);
                  return (
                    <tr key={sku.id} data-sku={sku.name}>
                      <td id={`sku-${sku.id}`}>
                        <strong>{sku.display_name}</strong>
                        <div className="muted">
                          <code>{sku.name}</code>
                        </div>
                      </td>
                      <td>{sku.gpu_model}</td>
                      <td className="num">{formatMib(sku.gpu_memory_mib)}</td>
                      <td className="num">{sku.gpus_per_node}</td>
                      <td>
                        {sku.vcpus_per_node} vCPU, {formatBytes(sku.memory_bytes_per_node)} RAM
                      </td>
                      <td className="num">{formatMoney(sku.price_per_gpu_hour_minor, sku.currency)}</td>
                      <td>
                        <FreeCell sku={sku} capacity={cap} loaded={nodesLoaded} />
                      </td>
                      <td>
                        <Link
                          className="button button-small"
                          to={`/allocations/new?sku=${encodeURIComponent(sku.name)}`}
                          aria-describedby={`sku-${sku.id}`}
                        >
                          Create allocation
                        </Link>
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </QueryView>
    </Page>
  );
}
