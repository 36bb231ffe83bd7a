// /admin/fleet: every node with its lifecycle, heartbeat, agent version and GPU
// occupancy; offline nodes first. Operators create SKUs and register nodes here.

import { useState } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { useApi } from "../../../../shared/data/ApiContext";
import { unwrap } from "../../../../shared/data/client";
import { formatDateTime } from "../../../../shared/i18n/format";
import { SelectField } from "../../../../shared/ui/Field";
import { Page, StatusBadge } from "../../../../shared/ui/Page";
import { Pager, useCursorPager } from "../../../../shared/ui/Pager";
import { Empty, QueryView } from "../../../../shared/ui/states";
import { GpuOccupancy, ago, type NodeView } from "./adminUi";
import { NODES_KEY, RegisterNodeModal } from "./RegisterNodeModal";
import { CreateSkuModal, SkuSection } from "./SkuSection";

const PAGE_SIZE = 50;

const STATUSES = [
  { value: "", label: "All statuses" },
  { value: "offline", label: "Offline" },
  { value: "pending_enrollment", label: "Pending enrollment" },
  { value: "active", label: "Active" },
  { value: "draining", label: "Draining" },
  { value: "retired", label: "Retired" },
] as const;

/** Poll fast while a node is still coming up (enrolling, first inventory), slowly otherwise. */
function pollInterval(nodes: NodeView[] | undefined): number {
  const settling = (nodes ?? []).some(
    (node) => node.status === "pending_enrollment" || (node.status === "active" && node.occupancy.gpus_total === 0),
  );
  return settling ? 3_000 : 10_000;
}

/** Offline nodes first (they need a person); the API's order (newest first) otherwise. */
function offlineFirst(nodes: NodeView[]): NodeView[] {
  return [...nodes.filter((node) => node.status === "offline"), ...nodes.filter((node) => node.status !== "offline")];
}

function NodeTable({ nodes, caption, rowTestId = "node-row" }: { nodes: NodeView[]; caption: string; rowTestId?: string }) {
  return (
    <div className="table-wrap">
      <table>
        <caption className="visually-hidden">{caption}</caption>
        <thead>
          <tr>
            <th scope="col">Hostname</th>
            <th scope="col">SKU</th>
            <th scope="col">Status</th>
            <th scope="col">GPUs</th>
            <th scope="col">Last heartbeat</th>
            <th scope="col">Agent version</th>
          </tr>
        </thead>
        <tbody>
          {nodes.map((node) => (
            <tr
              key={node.id}
              className={node.status === "offline" ? "row-offline" : undefined}
              data-testid={rowTestId}
              data-node-id={node.id}
              data-hostname={node.hostname}
              data-status={node.status}
            >
              <td>
                <Link to={`/admin/fleet/${encodeURIComponent(node.id)}`}>{node.hostname}</Link>
              </td>
              <td>{node.sku_name}</td>
              <td>
                <span data-testid="node-status">
                  <StatusBadge status={node.status} />
                </span>
                {node.drain_requested && node.status !== "draining" ? <span className="muted"> (drain requested)</span> : null}
              </td>
              <td>
                <GpuOccupancy occupancy={node.occupancy} compact />
              </td>
              <td>
                {node.last_heartbeat_at ? (
                  <time dateTime={node.last_heartbeat_at} title={formatDateTime(node.last_heartbeat_at)}>
                    {ago(node.last_heartbeat_at)}
                  </time>
                ) : (
                  <span className="muted">never</span>
                )}
              </td>
              <td>{node.agent_version ?? <span className="muted">—</span>}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/** Offline nodes, above everything else, when there are any. */
function OfflineSection() {
  const api = useApi();
  const offline = useQuery({
    queryKey: [...NODES_KEY, "offline-section"],
    queryFn: () => unwrap(api.GET("/api/v1/admin/nodes", { params: { query: { status: "offline", limit: PAGE_SIZE } } })),
    refetchInterval: 10_000,
  });
  if (offline.data === undefined || offline.data.items.length === 0) return null;
  const count = offline.data.items.length;
  return (
    <section className="card" aria-labelledby="offline-heading">
      <h2 id="offline-heading">
        Offline nodes ({count}
        {offline.data.next_cursor ? "+" : ""})
      </h2>
      <p className="warning">
        These nodes have stopped sending heartbeats. Their allocations may be unreachable; check the host and its agent.
      </p>
      <NodeTable nodes={offline.data.items} caption="Offline nodes" rowTestId="offline-node-row" />
      {offline.data.next_cursor ? <p className="muted">More offline nodes: filter the list below by “Offline”.</p> : null}
    </section>
  );
}

export default function FleetPage() {
  const api = useApi();
  const [status, setStatus] = useState("");
  const pager = useCursorPager();
  const [skuOpen, setSkuOpen] = useState(false);
  const [registerOpen, setRegisterOpen] = useState(false);

  const nodes = useQuery({
    queryKey: [...NODES_KEY, { status, cursor: pager.cursor }],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/admin/nodes", {
          params: { query: { status: status === "" ? undefined : status, cursor: pager.cursor ?? undefined, limit: PAGE_SIZE } },
        }),
      ),
    placeholderData: keepPreviousData,
    refetchInterval: (query) => pollInterval(query.state.data?.items),
  });

  return (
    <Page
      title="Fleet"
      actions={
        <>
          <button type="button" className="button" onClick={() => setSkuOpen(true)}>
            Create SKU
          </button>
          <button type="button" className="button button-primary" onClick={() => setRegisterOpen(true)}>
            Register node
          </button>
        </>
      }
    >
      <OfflineSection />

      <section className="card" aria-labelledby="nodes-heading">
        <h2 id="nodes-heading">Nodes</h2>
        <div className="toolbar">
          <SelectField
            label="Status"
            value={status}
            options={STATUSES}
            onChange={(value) => {
              setStatus(value);
              pager.reset();
            }}
          />
        </div>
        <QueryView
          query={nodes}
          loadingLabel="Loading nodes"
          isEmpty={(data) => data.items.length === 0}
          empty={
            <Empty title={status === "" ? "No nodes yet" : "No nodes with this status"}>
              {status === "" ? <p>Create a SKU, then register a node and run its enrollment command on the host.</p> : null}
            </Empty>
          }
        >
          {(data) => (
            <>
              <NodeTable nodes={offlineFirst(data.items)} caption="Nodes, offline first" />
              <Pager pager={pager} nextCursor={data.next_cursor} label="Nodes" />
            </>
          )}
        </QueryView>
      </section>

      <SkuSection />

      <CreateSkuModal open={skuOpen} onClose={() => setSkuOpen(false)} />
      <RegisterNodeModal open={registerOpen} onClose={() => setRegisterOpen(false)} />
    </Page>
  );
}
