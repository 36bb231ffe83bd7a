// /admin/allocations: every allocation, with those whose release failed first (they
// need a person), and a "Force release" for any allocation still holding GPUs.

import { useState, type FormEvent } from "react";
import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Link } from "react-router";
import type { components } from "../../../../shared/api/schema";
import { useApi } from "../../../../shared/data/ApiContext";
import { unwrap } from "../../../../shared/data/client";
import { formatDateTime, shortId } from "../../../../shared/i18n/format";
import { useAnnounce } from "../../../../shared/ui/Announcer";
import { Field, SelectField } from "../../../../shared/ui/Field";
import { Modal } from "../../../../shared/ui/Modal";
import { Page, StatusBadge } from "../../../../shared/ui/Page";
import { Pager, useCursorPager } from "../../../../shared/ui/Pager";
import { Empty, QueryView } from "../../../../shared/ui/states";
import { useAdminSkus } from "../../compute/admin/SkuSection";
import { ActionError } from "../../../../shared/ui/ActionError";
import { toApiError } from "../../../../shared/data/errors";

type Allocation = components["schemas"]["Allocation"];

const ALLOCATIONS_KEY = ["admin", "allocations"] as const;
const PAGE_SIZE = 50;
const MAX_REASON = 500;

const STATUSES = [
  { value: "", label: "All statuses" },
  { value: "requested", label: "Requested" },
  { value: "provisioning", label: "Provisioning" },
  { value: "active", label: "Active" },
  { value: "releasing", label: "Releasing" },
  { value: "release_failed", label: "Release failed" },
  { value: "released", label: "Released" },
  { value: "failed", label: "Failed" },
] as const;

const TERMINAL = new Set(["released", "failed"]);

function isTerminal(allocation: Allocation): boolean {
  return TERMINAL.has(allocation.status);
}

/** What a force release will do to an allocation in this state, in words. */
function forceReleaseEffect(allocation: Allocation): string {
  switch (allocation.status) {
    case "release_failed":
      return "The failed release is tried again and metering stops now.";
    case "requested":
    case "provisioning":
      return "Provisioning stops: the allocation fails, its GPUs are freed and the node is told to remove its user. Metering stops now.";
    case "releasing":
      return "The release is driven to completion; metering stops now.";
    default:
      return "The user's access is removed from the node, the GPUs are freed and metering stops now.";
  }
}

function Id({ value }: { value: string }) {
  return (
    <code title={value} data-full-id={value}>
      {shortId(value)}
    </code>
  );
}

function AllocationTable({
  allocations,
  caption,
  skuNames,
  onForceRelease,
}: {
  allocations: Allocation[];
  caption: string;
  skuNames: Map<string, string>;
  onForceRelease: (allocation: Allocation) => void;
}) {
  return (
    <div className="table-wrap">
      <table>
        <caption className="visually-hidden">{caption}</caption>
        <thead>
          <tr>
            <th scope="col">Allocation</th>
            <th scope="col">Tenant</th>
            <th scope="col">User</th>
            <th scope="col">SKU</th>
            <th scope="col" className="num">GPUs</th>
            <th scope="col">Node</th>
            <th scope="col">Status</th>
            <th scope="col">Created</th>
            <th scope="col">Failure reason</th>
            <th scope="col">
              <span className="visually-hidden">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {allocations.map((allocation) => (
            <tr key={allocation.id} data-testid="admin-allocation-row" data-allocation-id={allocation.id} data-status={allocation.status}>
              <td>
                <Id value={allocation.id} />
                {allocation.name ? <div className="muted">{allocation.name}</div> : null}
              </td>
              <td>
                <Id value={allocation.tenant_id} />
              </td>
              <td>
                <Link to={`/admin/users/${encodeURIComponent(allocation.user_id)}`} aria-label={`User ${shortId(allocation.user_id)}`}>
                  <Id value={allocation.user_id} />
                </Link>
              </td>
              <td>{skuNames.get(allocation.sku_id) ?? <Id value={allocation.sku_id} />}</td>
              <td className="num">
                {allocation.gpu_count}
                {allocation.gpu_indices.length > 0 ? (
                  <div className="muted">
                    <span className="visually-hidden">indices </span>#{allocation.gpu_indices.join(", #")}
                  </div>
                ) : null}
              </td>
              <td>
                <Link to={`/admin/fleet/${encodeURIComponent(allocation.node_id)}`} aria-label={`Node ${shortId(allocation.node_id)}`}>
                  <Id value={allocation.node_id} />
                </Link>
              </td>
              <td>
                <span data-testid="allocation-status">
                  <StatusBadge status={allocation.status} />
                </span>
              </td>
              <td>{formatDateTime(allocation.created_at)}</td>
              <td>{allocation.failure_reason ?? <span className="muted">—</span>}</td>
              <td>
                {isTerminal(allocation) ? null : (
                  <button
                    type="button"
                    className="button button-small button-danger"
                    onClick={() => onForceRelease(allocation)}
                    aria-label={`Force release allocation ${shortId(allocation.id)}`}
                  >
                    Force release
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function ForceReleaseModal({ allocation, onClose }: { allocation: Allocation | null; onClose: () => void }) {
  const api = useApi();
  const queryClient = useQueryClient();
  const announce = useAnnounce();
  const [reason, setReason] = useState("");
  const [reasonError, setReasonError] = useState<string | null>(null);
  const release = useMutation({
    mutationFn: ({ id, why }: { id: string; why: string }) =>
      unwrap(
        api.POST("/api/v1/admin/allocations/{allocation_id}/force-release", {
          params: { path: { allocation_id: id } },
          body: { reason: why },
        }),
      ),
    onSuccess: (updated) => {
      void queryClient.invalidateQueries({ queryKey: ALLOCATIONS_KEY });
      announce(`Allocation ${shortId(updated.id)} force-released: now ${updated.status.replace(/_/g, " ")}`);
      close();
    },
  });

  function close() {
    setReason("");
    setReasonError(null);
    release.reset();
    onClose();
  }

  function submit(event: FormEvent) {
    event.preventDefault();
    if (allocation === null) return;
    const why = reason.trim();
    const problem =
      why === "" ? "Say why, for the audit trail and the allocation's history." : why.length > MAX_REASON ? `At most ${MAX_REASON} characters.` : null;
    setReasonError(problem);
    if (problem !== null) return;
    release.mutate({ id: allocation.id, why });
  }

  const error = release.error ? toApiError(release.error) : null;
  const serverReasonError = error?.field === "reason" ? error.message : null;

  return (
    <Modal open={allocation !== null} title={`Force release allocation ${allocation ? shortId(allocation.id) : ""}`} onClose={close}>
      {allocation ? (
        <form onSubmit={submit} noValidate>
          <p>
            Allocation <code>{allocation.id}</code> is <StatusBadge status={allocation.status} />. {forceReleaseEffect(allocation)}
          </p>
          <p>This is recorded in the audit log with your reason.</p>
          <Field label="Reason" error={reasonError ?? serverReasonError} hint={`1 to ${MAX_REASON} characters.`}>
            {(props) => (
              <textarea {...props} value={reason} onChange={(e) => setReason(e.target.value)} maxLength={MAX_REASON} required />
            )}
          </Field>
          {error !== null && serverReasonError === null ? (
            <ActionError
              error={error}
              what={error.status === 409 ? "It is already released or failed" : "The allocation was not released"}
            />
          ) : null}
          <div className="modal-actions">
            <button type="button" className="button" onClick={close}>
              Cancel
            </button>
            <button type="submit" className="button button-danger" disabled={release.isPending} aria-busy={release.isPending}>
              {release.isPending ? "Releasing…" : "Force release"}
            </button>
          </div>
        </form>
      ) : null}
    </Modal>
  );
}

/** Allocations whose release failed: GPUs or a user may still be on a node. */
function ReleaseFailedSection({
  skuNames,
  onForceRelease,
}: {
  skuNames: Map<string, string>;
  onForceRelease: (allocation: Allocation) => void;
}) {
  const api = useApi();
  const pager = useCursorPager();
  const failed = useQuery({
    queryKey: [...ALLOCATIONS_KEY, "release_failed", pager.cursor],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/admin/allocations", {
          params: { query: { status: "release_failed", cursor: pager.cursor ?? undefined, limit: PAGE_SIZE } },
        }),
      ),
    placeholderData: keepPreviousData,
    refetchInterval: 15_000,
  });
  if (failed.data === undefined || (failed.data.items.length === 0 && pager.page === 1)) return null;
  return (
    <section className="card" aria-labelledby="release-failed-heading" data-testid="release-failed-section">
      <h2 id="release-failed-heading">Release failed: needs a person</h2>
      <p className="warning">
        The release of these allocations did not complete, so a user or GPUs may still be held on the node. Check the node,
        then force release each one.
      </p>
      <AllocationTable
        allocations={failed.data.items}
        caption="Allocations whose release failed"
        skuNames={skuNames}
        onForceRelease={onForceRelease}
      />
      <Pager pager={pager} nextCursor={failed.data.next_cursor} label="Release-failed allocations" />
    </section>
  );
}

export default function AdminAllocationsPage() {
  const api = useApi();
  const [status, setStatus] = useState("");
  const pager = useCursorPager();
  const [target, setTarget] = useState<Allocation | null>(null);
  const skus = useAdminSkus();
  const skuNames = new Map((skus.data?.items ?? []).map((sku) => [sku.id, sku.display_name || sku.name]));

  const allocations = useQuery({
    queryKey: [...ALLOCATIONS_KEY, "list", { status, cursor: pager.cursor }],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/admin/allocations", {
          params: { query: { status: status === "" ? undefined : status, cursor: pager.cursor ?? undefined, limit: PAGE_SIZE } },
        }),
      ),
    placeholderData: keepPreviousData,
    refetchInterval: 15_000,
  });

  return (
    <Page title="All allocations">
      {status !== "release_failed" ? <ReleaseFailedSection skuNames={skuNames} onForceRelease={setTarget} /> : null}

      <section className="card" aria-labelledby="allocations-heading">
        <h2 id="allocations-heading">Allocations</h2>
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
          query={allocations}
          loadingLabel="Loading allocations"
          isEmpty={(data) => data.items.length === 0}
          empty={<Empty title={status === "" ? "No allocations yet" : "No allocations with this status"} />}
        >
          {(data) => (
            <>
              <AllocationTable
                allocations={data.items}
                caption="All allocations, newest first"
                skuNames={skuNames}
                onForceRelease={setTarget}
              />
              <Pager pager={pager} nextCursor={data.next_cursor} label="Allocations" />
            </>
          )}
        </QueryView>
      </section>

      <ForceReleaseModal allocation={target} onClose={() => setTarget(null)} />
    </Page>
  );
}
