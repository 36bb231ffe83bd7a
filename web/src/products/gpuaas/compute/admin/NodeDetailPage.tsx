// /admin/fleet/:nodeId: one node's facts, GPUs and occupancy, the operator's
// actions on it (drain, resume, retire, revoke certificates, new enrollment token,
// probe) and its recent tasks.

import { useState, type FormEvent, type ReactNode } from "react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Link, useParams } from "react-router";
import type { components } from "../../../../shared/api/schema";
import { useApi } from "../../../../shared/data/ApiContext";
import { unwrap } from "../../../../shared/data/client";
import { formatDateTime, shortId } from "../../../../shared/i18n/format";
import { useAnnounce } from "../../../../shared/ui/Announcer";
import { CopyButton } from "../../../../shared/ui/CopyButton";
import { Field } from "../../../../shared/ui/Field";
import { ConfirmModal, Modal } from "../../../../shared/ui/Modal";
import { Page, StatusBadge } from "../../../../shared/ui/Page";
import { Pager, useCursorPager } from "../../../../shared/ui/Pager";
import { Empty, QueryView } from "../../../../shared/ui/states";
import { EnrollmentCommand, GpuOccupancy, ago, formatBytes, type EnrollmentTicket, type NodeView } from "./adminUi";
import { NODES_KEY } from "./RegisterNodeModal";
import { ActionError } from "../../../../shared/ui/ActionError";
import { toApiError } from "../../../../shared/data/errors";

type NodeTask = components["schemas"]["NodeTask"];

const TERMINAL_TASK = new Set(["succeeded", "failed", "expired"]);

function nodeKey(nodeId: string) {
  return [...NODES_KEY, "one", nodeId] as const;
}

function Facts({ node }: { node: NodeView }) {
  const host = node.host ?? null;
  return (
    <div className="cards">
      <section className="card" aria-labelledby="node-facts-heading">
        <h2 id="node-facts-heading">Node</h2>
        <dl className="facts">
          <dt>Status</dt>
          <dd>
            <span data-testid="node-status">
              <StatusBadge status={node.status} />
            </span>
            {node.drain_requested ? <span className="muted"> (drain requested: no new placements)</span> : null}
          </dd>
          <dt>Hostname</dt>
          <dd data-testid="node-hostname">{node.hostname}</dd>
          <dt>Node id</dt>
          <dd>
            <code>{node.id}</code>
          </dd>
          <dt>SKU</dt>
          <dd>{node.sku_name}</dd>
          <dt>Onboarding</dt>
          <dd>{node.onboarding_mode === "maas" ? "MAAS" : "Manual"}</dd>
          <dt>Registered</dt>
          <dd>{formatDateTime(node.created_at)}</dd>
          <dt>Enrolled</dt>
          <dd>{node.enrolled_at ? formatDateTime(node.enrolled_at) : "Not yet"}</dd>
          <dt>Last heartbeat</dt>
          <dd>
            {node.last_heartbeat_at ? (
              <>
                <time dateTime={node.last_heartbeat_at}>{formatDateTime(node.last_heartbeat_at)}</time> (
                {ago(node.last_heartbeat_at)})
              </>
            ) : (
              "never"
            )}
          </dd>
          <dt>Agent version</dt>
          <dd>{node.agent_version ?? "—"}</dd>
          {node.retired_at ? (
            <>
              <dt>Retired</dt>
              <dd>{formatDateTime(node.retired_at)}</dd>
            </>
          ) : null}
        </dl>
      </section>
      <section className="card" aria-labelledby="host-facts-heading">
        <h2 id="host-facts-heading">Host</h2>
        {host === null ? (
          <p className="muted">The agent has not reported host facts yet.</p>
        ) : (
          <dl className="facts">
            <dt>Reported hostname</dt>
            <dd>{host.reported_hostname ?? "—"}</dd>
            <dt>CPU cores</dt>
            <dd>{host.cpu_cores ?? "—"}</dd>
            <dt>Memory</dt>
            <dd>{formatBytes(host.memory_bytes)}</dd>
            <dt>Disk</dt>
            <dd>{formatBytes(host.disk_bytes)}</dd>
            <dt>GPU facts</dt>
            <dd>{host.source === "declared" ? "Declared (inventory file)" : "Detected (NVML)"}</dd>
            <dt>Updated</dt>
            <dd>{formatDateTime(host.updated_at)}</dd>
          </dl>
        )}
      </section>
    </div>
  );
}

function Gpus({ node }: { node: NodeView }) {
  return (
    <section className="card" aria-labelledby="gpus-heading">
      <h2 id="gpus-heading">GPUs</h2>
      <GpuOccupancy occupancy={node.occupancy} />
      <p className="muted">
        {node.occupancy.gpus_free} free, {node.occupancy.gpus_allocated} allocated.
      </p>
      {node.gpus.length === 0 ? (
        <Empty title="No GPUs reported">
          <p>The agent reports the node&apos;s GPUs after it enrolls and runs its first inventory.</p>
        </Empty>
      ) : (
        <div className="table-wrap">
          <table>
            <caption className="visually-hidden">GPUs of {node.hostname} and their health</caption>
            <thead>
              <tr>
                <th scope="col" className="num">Index</th>
                <th scope="col">Model</th>
                <th scope="col" className="num">Memory</th>
                <th scope="col">Health</th>
                <th scope="col">Driver</th>
                <th scope="col">CUDA</th>
                <th scope="col">UUID</th>
                <th scope="col">Source</th>
              </tr>
            </thead>
            <tbody>
              {node.gpus.map((gpu) => (
                <tr key={gpu.index} data-testid="gpu-row">
                  <td className="num">{gpu.index}</td>
                  <td>{gpu.model}</td>
                  <td className="num">{formatBytes(gpu.memory_mib * 1024 * 1024)}</td>
                  <td>
                    <StatusBadge status={gpu.health} />
                  </td>
                  <td>{gpu.driver_version ?? "—"}</td>
                  <td>{gpu.cuda_version ?? "—"}</td>
                  <td>{gpu.uuid ? <code title={gpu.uuid}>{shortId(gpu.uuid)}</code> : "—"}</td>
                  <td>{gpu.source}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

function TaskOutcome({ task }: { task: NodeTask }) {
  if (task.refusal_code) return <>Refused by the agent: {task.refusal_code}</>;
  if (task.error) return <>{task.error}</>;
  return <span className="muted">—</span>;
}

function Tasks({ nodeId }: { nodeId: string }) {
  const api = useApi();
  const pager = useCursorPager();
  const tasks = useQuery({
    queryKey: [...nodeKey(nodeId), "tasks", pager.cursor],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/admin/nodes/{node_id}/tasks", {
          params: { path: { node_id: nodeId }, query: { cursor: pager.cursor ?? undefined, limit: 50 } },
        }),
      ),
    placeholderData: keepPreviousData,
    refetchInterval: (query) => ((query.state.data?.items ?? []).some((task) => !TERMINAL_TASK.has(task.status)) ? 3_000 : 15_000),
  });
  return (
    <section className="card" aria-labelledby="tasks-heading">
      <h2 id="tasks-heading">Recent tasks</h2>
      <QueryView
        query={tasks}
        loadingLabel="Loading tasks"
        isEmpty={(data) => data.items.length === 0}
        empty={<Empty title="No tasks yet">Tasks appear when the node is probed or an allocation is placed on it.</Empty>}
      >
        {(data) => (
          <>
            <div className="table-wrap">
              <table>
                <caption className="visually-hidden">Tasks of this node, newest first</caption>
                <thead>
                  <tr>
                    <th scope="col">Type</th>
                    <th scope="col">Status</th>
                    <th scope="col" className="num">Attempts</th>
                    <th scope="col">Created</th>
                    <th scope="col">Completed</th>
                    <th scope="col">Error</th>
                    <th scope="col">Correlation id</th>
                  </tr>
                </thead>
                <tbody>
                  {data.items.map((task) => (
                    <tr key={task.id} data-testid="task-row">
                      <td>
                        <code>{task.task_type}</code>
                      </td>
                      <td>
                        <StatusBadge status={task.status} />
                      </td>
                      <td className="num">
                        {task.attempts} of {task.max_attempts}
                      </td>
                      <td>{formatDateTime(task.created_at)}</td>
                      <td>{formatDateTime(task.completed_at)}</td>
                      <td>
                        <TaskOutcome task={task} />
                      </td>
                      <td>
                        <code title={task.correlation_id}>{shortId(task.correlation_id)}</code>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
            <Pager pager={pager} nextCursor={data.next_cursor} label="Tasks" />
          </>
        )}
      </QueryView>
    </section>
  );
}

type Dialog = "drain" | "resume" | "retire" | "revoke" | "token" | null;

function Actions({ node }: { node: NodeView }) {
  const api = useApi();
  const queryClient = useQueryClient();
  const announce = useAnnounce();
  const [dialog, setDialog] = useState<Dialog>(null);
  const [reason, setReason] = useState("");
  const [reasonError, setReasonError] = useState<string | null>(null);
  const [ticket, setTicket] = useState<EnrollmentTicket | null>(null);
  const [probeNote, setProbeNote] = useState<string | null>(null);
  const path = { params: { path: { node_id: node.id } } };
  const retired = node.status === "retired";

  const refresh = (updated?: NodeView) => {
    if (updated) queryClient.setQueryData(nodeKey(node.id), updated);
    void queryClient.invalidateQueries({ queryKey: NODES_KEY });
  };

  const drain = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/admin/nodes/{node_id}/drain", path)),
    onSuccess: (updated) => {
      refresh(updated);
      setDialog(null);
      announce(`${node.hostname} is draining: no new allocations will be placed on it`);
    },
  });
  const resume = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/admin/nodes/{node_id}/resume", path)),
    onSuccess: (updated) => {
      refresh(updated);
      setDialog(null);
      announce(`${node.hostname} takes new allocations again`);
    },
  });
  const retire = useMutation({
    mutationFn: () => unwrap(api.DELETE("/api/v1/admin/nodes/{node_id}", path)),
    onSuccess: (updated) => {
      refresh(updated);
      setDialog(null);
      announce(`${node.hostname} is retired`);
    },
  });
  const revoke = useMutation({
    mutationFn: (why: string) =>
      unwrap(api.POST("/api/v1/admin/nodes/{node_id}/revoke-certificates", { ...path, body: { reason: why } })),
    onSuccess: (result) => {
      refresh();
      setDialog(null);
      setReason("");
      announce(
        `${result.certificates_revoked} certificate${result.certificates_revoked === 1 ? "" : "s"} of ${node.hostname} revoked; its agent is refused from its next request`,
      );
    },
  });
  const issueToken = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/admin/nodes/{node_id}/enrollment-token", path)),
    onSuccess: (issued) => {
      setTicket(issued);
      refresh();
      announce(`New enrollment token issued for ${node.hostname}. Copy the command now; it is shown once.`);
    },
  });
  const probe = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/admin/nodes/{node_id}/probe", path)),
    onSuccess: (task) => {
      void queryClient.invalidateQueries({ queryKey: nodeKey(node.id) });
      const note = TERMINAL_TASK.has(task.status)
        ? `Probe finished: ${task.status.replace(/_/g, " ")}${task.error ? ` (${task.error})` : ""}.`
        : "The probe is queued; the node has not answered yet. Its result will appear under Recent tasks.";
      setProbeNote(note);
      announce(note);
    },
  });

  function closeDialog() {
    setDialog(null);
    setReason("");
    setReasonError(null);
    setTicket(null);
    for (const mutation of [drain, resume, retire, revoke, issueToken]) mutation.reset();
  }

  function submitRevoke(event: FormEvent) {
    event.preventDefault();
    const why = reason.trim();
    if (why === "") {
      setReasonError("Say why, for the audit trail.");
      return;
    }
    if (why.length > 512) {
      setReasonError("At most 512 characters.");
      return;
    }
    setReasonError(null);
    revoke.mutate(why);
  }

  const retireError = retire.error ? toApiError(retire.error) : null;
  const revokeFieldError = revoke.error && toApiError(revoke.error).field === "reason" ? toApiError(revoke.error).message : null;
  const canDrain = !retired && !node.drain_requested && node.status !== "draining";
  const canResume = !retired && (node.drain_requested || node.status === "draining");

  return (
    <section className="card" aria-labelledby="actions-heading">
      <h2 id="actions-heading">Actions</h2>
      {retired ? <p className="notice">This node is retired: it takes no allocations and its agent cannot enroll again.</p> : null}
      <div className="toolbar">
        {canDrain ? (
          <button type="button" className="button" onClick={() => setDialog("drain")}>
            Drain
          </button>
        ) : null}
        {canResume ? (
          <button type="button" className="button" onClick={() => setDialog("resume")}>
            Resume
          </button>
        ) : null}
        <button
          type="button"
          className="button"
          onClick={() => {
            setProbeNote(null);
            probe.mutate();
          }}
          disabled={probe.isPending || retired}
          aria-busy={probe.isPending}
        >
          {probe.isPending ? "Probing…" : "Probe"}
        </button>
        <button type="button" className="button" onClick={() => setDialog("token")} disabled={retired}>
          New enrollment token
        </button>
        <button type="button" className="button button-danger" onClick={() => setDialog("revoke")} disabled={retired}>
          Revoke certificates
        </button>
        <button type="button" className="button button-danger" onClick={() => setDialog("retire")} disabled={retired}>
          Retire
        </button>
      </div>
      {probeNote ? (
        <p className="notice" data-testid="probe-result">
          {probeNote}
        </p>
      ) : null}
      {probe.error ? (
        <ActionError
          error={probe.error}
          what={toApiError(probe.error).status === 409 ? "The node cannot be probed before its agent enrolls" : "The probe failed"}
        />
      ) : null}

      <ConfirmModal
        open={dialog === "drain"}
        title={`Drain ${node.hostname}?`}
        confirmLabel="Drain"
        busy={drain.isPending}
        onConfirm={() => drain.mutate()}
        onClose={closeDialog}
      >
        <p>No new allocations will be placed on this node. Allocations already on it keep running until they are released.</p>
        <ActionError error={drain.error} what="The node was not drained" />
      </ConfirmModal>

      <ConfirmModal
        open={dialog === "resume"}
        title={`Resume ${node.hostname}?`}
        confirmLabel="Resume"
        busy={resume.isPending}
        onConfirm={() => resume.mutate()}
        onClose={closeDialog}
      >
        <p>The node becomes schedulable again: new allocations may be placed on its free GPUs.</p>
        <ActionError error={resume.error} what="The node was not resumed" />
      </ConfirmModal>

      <ConfirmModal
        open={dialog === "retire"}
        title={`Retire ${node.hostname}?`}
        confirmLabel="Retire"
        danger
        busy={retire.isPending}
        onConfirm={() => retire.mutate()}
        onClose={closeDialog}
      >
        <p>
          A retired node leaves the fleet for good: it takes no allocations and its agent cannot enroll again. This cannot be
          undone.
        </p>
        <p>It is refused while any allocation still holds one of its GPUs.</p>
        {retireError?.code === "node_in_use" ? (
          <div className="form-error" role="alert" data-error-code="node_in_use">
            <p>
              <strong>This node is still in use.</strong>
            </p>
            <p>
              {node.occupancy.gpus_allocated > 0
                ? `${node.occupancy.gpus_allocated} of its GPUs are held by allocations. `
                : "Allocations still hold its GPUs. "}
              Drain it first so nothing new lands on it, wait for those allocations to be released (or force-release them
              from <Link to="/admin/allocations">All allocations</Link>), then retire it.
            </p>
            {retireError.correlationId ? (
              <p className="correlation">
                Correlation id: <code>{retireError.correlationId}</code>{" "}
                <CopyButton text={retireError.correlationId} label="Copy correlation id" />
              </p>
            ) : null}
          </div>
        ) : (
          <ActionError error={retire.error} what="The node was not retired" />
        )}
      </ConfirmModal>

      <Modal open={dialog === "revoke"} title={`Revoke the certificates of ${node.hostname}`} onClose={closeDialog}>
        <form onSubmit={submitRevoke} noValidate>
          <p>
            Every certificate of this node is revoked at once: its agent is refused on its next request and stops. To bring
            the node back, issue a new enrollment token and enroll the agent again.
          </p>
          <Field label="Reason" error={reasonError ?? revokeFieldError} hint="Recorded in the audit log.">
            {(props) => (
              <textarea {...props} value={reason} onChange={(e) => setReason(e.target.value)} maxLength={512} required />
            )}
          </Field>
          {revokeFieldError === null ? <ActionError error={revoke.error} what="The certificates were not revoked" /> : null}
          <div className="modal-actions">
            <button type="button" className="button" onClick={closeDialog}>
              Cancel
            </button>
            <button type="submit" className="button button-danger" disabled={revoke.isPending} aria-busy={revoke.isPending}>
              {revoke.isPending ? "Revoking…" : "Revoke certificates"}
            </button>
          </div>
        </form>
      </Modal>

      {ticket === null ? (
        <ConfirmModal
          open={dialog === "token"}
          title={`New enrollment token for ${node.hostname}?`}
          confirmLabel="Issue token"
          busy={issueToken.isPending}
          onConfirm={() => issueToken.mutate()}
          onClose={closeDialog}
        >
          <p>
            Use this when the token was lost or the host was reinstalled. Any earlier unused token of this node stops
            working. The new one is shown once.
          </p>
          <ActionError error={issueToken.error} what="No token was issued" />
        </ConfirmModal>
      ) : (
        <Modal open={dialog === "token"} title={`Enrollment token for ${node.hostname}`} onClose={closeDialog}>
          <div className="modal-body">
            <EnrollmentCommand ticket={ticket} hostname={node.hostname} />
          </div>
          <div className="modal-actions">
            <button type="button" className="button button-primary" onClick={closeDialog}>
              Done
            </button>
          </div>
        </Modal>
      )}
    </section>
  );
}

function NodeBody({ node, children }: { node: NodeView; children?: ReactNode }) {
  return (
    <>
      {node.status === "offline" ? (
        <p className="warning" role="status">
          <strong>Offline:</strong> no heartbeat since {formatDateTime(node.last_heartbeat_at)}. Check the host and its agent.
        </p>
      ) : null}
      {node.status === "pending_enrollment" ? (
        <p className="notice">
          Waiting for the agent to enroll. Run the enrollment command on the host; if the token was lost or has expired,
          issue a new one below.
        </p>
      ) : null}
      <Facts node={node} />
      <Gpus node={node} />
      {children}
    </>
  );
}

export default function NodeDetailPage() {
  const api = useApi();
  const { nodeId = "" } = useParams();
  const node = useQuery({
    queryKey: nodeKey(nodeId),
    queryFn: () => unwrap(api.GET("/api/v1/admin/nodes/{node_id}", { params: { path: { node_id: nodeId } } })),
    refetchInterval: (query) => {
      const data = query.state.data;
      return data && (data.status === "pending_enrollment" || data.gpus.length === 0) && data.status !== "retired" ? 3_000 : 15_000;
    },
  });
  return (
    <Page title={node.data ? `Node ${node.data.hostname}` : "Node"}>
      <p>
        <Link to="/admin/fleet">← Fleet</Link>
      </p>
      <QueryView query={node} loadingLabel="Loading node">
        {(data) => (
          <NodeBody node={data}>
            <Actions node={data} />
            <Tasks nodeId={data.id} />
          </NodeBody>
        )}
      </QueryView>
    </Page>
  );
}
