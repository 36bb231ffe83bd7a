import { useEffect, useRef, useState, type ReactNode } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Link, useParams } from "react-router";
import { useMe } from "../../../shared/auth/session";
import { useApi } from "../../../shared/data/ApiContext";
import { idempotencyKey, unwrap } from "../../../shared/data/client";
import { ApiError } from "../../../shared/data/errors";
import { formatDateTime, formatMoney } from "../../../shared/i18n/format";
import { useAnnounce } from "../../../shared/ui/Announcer";
import { ConfirmModal } from "../../../shared/ui/Modal";
import { Page, StatusBadge } from "../../../shared/ui/Page";
import { ErrorPanel, Loading } from "../../../shared/ui/states";
import { skuIndex, useNodeSummaries, useSkus } from "../compute/catalog";
import { ActionError } from "../../../shared/ui/ActionError";
import { CopyButton } from "../../../shared/ui/CopyButton";
import {
  BackoffTracker,
  allocationLabel,
  buildTimeline,
  canRelease,
  isTerminal,
  isTransitional,
  statusAnnouncement,
  type Allocation,
} from "./allocation/model";
import { ALLOCATIONS_KEY, BALANCE_KEY } from "./allocation/queries";
import { Timeline } from "./allocation/Timeline";

function detailKey(id: string) {
  return [...ALLOCATIONS_KEY, "detail", id] as const;
}

function ReleaseControl({ allocation }: { allocation: Allocation }) {
  const api = useApi();
  const queryClient = useQueryClient();
  const [open, setOpen] = useState(false);
  // One key per confirmed release; a retry after a failure of the same click reuses it.
  const key = useRef<string | null>(null);
  const retry = allocation.status === "release_failed";

  const release = useMutation({
    mutationFn: () =>
      unwrap(
        api.POST("/api/v1/allocations/{allocation_id}/release", {
          params: { path: { allocation_id: allocation.id } },
          headers: { "X-Idempotency-Key": key.current ?? idempotencyKey() },
        }),
      ),
    onSuccess: (updated) => {
      key.current = null;
      setOpen(false);
      queryClient.setQueryData(detailKey(allocation.id), (old: Allocation | undefined) =>
        // The release answer may not carry the transitions; keep the ones we have until the next read.
        ({ ...updated, transitions: updated.transitions ?? old?.transitions }),
      );
      void queryClient.invalidateQueries({ queryKey: ALLOCATIONS_KEY });
    },
    onError: (error) => {
      setOpen(false);
      // The state moved on under us (already releasing…): show the latest.
      if (error instanceof ApiError && (error.status === 409 || error.status === 404)) {
        key.current = null;
        void queryClient.invalidateQueries({ queryKey: detailKey(allocation.id) });
      }
    },
  });

  if (!canRelease(allocation.status) && !release.isError) return null;
  return (
    <div className="card" data-testid="release-control">
      <h2>{retry ? "Release failed" : "Release"}</h2>
      {canRelease(allocation.status) ? (
        <>
          <p>
            {retry
              ? "The last release did not complete. You are not billed for it; try again, or ask an operator if it keeps failing."
              : "Releasing stops the machine, removes its data and ends billing. It cannot be undone."}
          </p>
          <button
            type="button"
            className="button button-danger"
            onClick={() => {
              release.reset();
              key.current ??= idempotencyKey();
              setOpen(true);
            }}
          >
            {retry ? "Retry release" : "Release"}
          </button>
        </>
      ) : null}
      {release.isError ? (
        <ActionError
          error={release.error}
          testId="release-error"
          next={
            release.error instanceof ApiError && release.error.status === 409
              ? "Someone or something already changed this allocation (it may be releasing already). The status above shows the latest."
              : undefined
          }
        />
      ) : null}
      <ConfirmModal
        open={open}
        title="Release allocation"
        confirmLabel="Release allocation"
        danger
        busy={release.isPending}
        onConfirm={() => release.mutate()}
        onClose={() => setOpen(false)}
      >
        <p>
          Release <strong>{allocationLabel(allocation)}</strong>? Its {allocation.gpu_count} GPU
          {allocation.gpu_count === 1 ? "" : "s"} go back to the pool and anything stored on the machine is deleted.
        </p>
        <p>
          Cost so far: {formatMoney(allocation.accrued_cost_minor, allocation.currency)}. Billing stops once the release
          completes.
        </p>
      </ConfirmModal>
    </div>
  );
}

function Details({ allocation, polling, release }: { allocation: Allocation; polling: boolean; release: ReactNode }) {
  const me = useMe();
  const skus = useSkus();
  const nodes = useNodeSummaries();
  const sku = skuIndex(skus.data?.items ?? []).get(allocation.sku_id);
  const node = nodes.data?.items.find((n) => n.id === allocation.node_id);
  const project = me.projects.find((p) => p.id === allocation.project_id);
  const showSsh = allocation.ssh && (allocation.status === "active" || allocation.status === "releasing");

  return (
    <>
      {allocation.status === "requested" || allocation.status === "provisioning" ? (
        <p className="notice">
          The machine is being prepared. This page follows its progress by itself; SSH access appears here once it is
          active.
        </p>
      ) : null}
      {allocation.failure_reason ? (
        <div className="warning" data-testid="failure-reason">
          <p>
            <strong>{allocation.status === "failed" ? "Provisioning failed" : "Problem"}:</strong> {allocation.failure_reason}
          </p>
          {allocation.status === "failed" ? (
            <p>
              You are not billed for a failed allocation. <Link to="/allocations/new">Create another allocation</Link> or
              check <Link to="/capacity">Capacity</Link>.
            </p>
          ) : null}
        </div>
      ) : null}

      {showSsh && allocation.ssh ? (
        <section className="card" aria-labelledby="ssh-title">
          <h2 id="ssh-title">Connect</h2>
          <p>Run this in a terminal that has one of the SSH keys you chose:</p>
          <pre data-testid="ssh-command">{allocation.ssh.command}</pre>
          <CopyButton text={allocation.ssh.command} label="Copy SSH command" />
        </section>
      ) : null}

      <section className="card" aria-labelledby="details-title">
        <h2 id="details-title">Details</h2>
        <dl className="facts">
          <dt>Status</dt>
          <dd>
            <span data-testid="allocation-status" data-status={allocation.status}>
              <StatusBadge status={allocation.status} />
            </span>
            {polling ? <span className="muted"> · updating automatically</span> : null}
          </dd>
          <dt>Id</dt>
          <dd>
            <code data-testid="allocation-id">{allocation.id}</code>
          </dd>
          {allocation.name ? (
            <>
              <dt>Name</dt>
              <dd>{allocation.name}</dd>
            </>
          ) : null}
          <dt>SKU</dt>
          <dd>{sku ? `${sku.display_name} (${sku.gpu_model})` : allocation.sku_id}</dd>
          <dt>Project</dt>
          <dd>{project?.name ?? allocation.project_id}</dd>
          <dt>Node</dt>
          <dd data-testid="allocation-node">
            {node?.hostname ? `${node.hostname} ` : null}
            <code>{allocation.node_id}</code>
          </dd>
          <dt>GPUs</dt>
          <dd>{allocation.gpu_count}</dd>
          <dt>GPU indices</dt>
          <dd data-testid="gpu-indices">{allocation.gpu_indices.length > 0 ? allocation.gpu_indices.join(", ") : "—"}</dd>
          <dt>Price per GPU-hour</dt>
          <dd>{formatMoney(allocation.price_per_gpu_hour_minor, allocation.currency)}</dd>
          <dt>Hourly cost</dt>
          <dd data-testid="hourly-cost">{formatMoney(allocation.hourly_cost_minor, allocation.currency)}</dd>
          <dt>Cost so far</dt>
          <dd data-testid="accrued-cost">{formatMoney(allocation.accrued_cost_minor, allocation.currency)}</dd>
          <dt>Created</dt>
          <dd>{formatDateTime(allocation.created_at)}</dd>
          {allocation.failure_reason ? (
            <>
              <dt>Failure reason</dt>
              <dd>{allocation.failure_reason}</dd>
            </>
          ) : null}
          <dt>Correlation id</dt>
          <dd>
            <code>{allocation.correlation_id}</code>
          </dd>
        </dl>
      </section>

      {release}

      <section className="card" aria-labelledby="timeline-title">
        <h2 id="timeline-title">Lifecycle</h2>
        <Timeline items={buildTimeline(allocation)} />
      </section>
    </>
  );
}

export default function AllocationDetailPage() {
  const { allocationId = "" } = useParams();
  const api = useApi();
  const queryClient = useQueryClient();
  const announce = useAnnounce();
  const tracker = useRef(new BackoffTracker());

  const query = useQuery({
    queryKey: detailKey(allocationId),
    queryFn: () => unwrap(api.GET("/api/v1/allocations/{allocation_id}", { params: { path: { allocation_id: allocationId } } })),
    // Fast after each change, slower while nothing changes, stopped once nothing can change.
    refetchInterval: (q) => {
      if (q.state.data === undefined) return false;
      return tracker.current.interval(q.state.dataUpdatedAt, q.state.data.status, isTerminal(q.state.data.status));
    },
    enabled: allocationId !== "",
  });

  const status = query.data?.status;
  // The last status seen of this allocation: a change is announced, the first read is not.
  const previous = useRef<{ id: string; status: string } | null>(null);
  useEffect(() => {
    if (status === undefined) return;
    const before = previous.current;
    if (before !== null && before.id === allocationId && before.status !== status) {
      announce(statusAnnouncement(status));
      // Money and the lists moved with it.
      void queryClient.invalidateQueries({ queryKey: BALANCE_KEY });
      void queryClient.invalidateQueries({ queryKey: [...ALLOCATIONS_KEY, "live"] });
      void queryClient.invalidateQueries({ queryKey: [...ALLOCATIONS_KEY, "list"] });
    }
    previous.current = { id: allocationId, status };
  }, [allocationId, status, announce, queryClient]);

  const title = query.data ? `Allocation ${allocationLabel(query.data)}` : "Allocation";
  return (
    <Page
      title={title}
      actions={
        <Link className="button" to="/allocations">
          All allocations
        </Link>
      }
    >
      {query.data ? (
        <>
          <Details
            allocation={query.data}
            polling={isTransitional(query.data.status)}
            release={<ReleaseControl allocation={query.data} />}
          />
        </>
      ) : query.error ? (
        <>
          <ErrorPanel error={query.error} onRetry={() => void query.refetch()} />
          {query.error instanceof ApiError && query.error.status === 404 ? (
            <p>
              <Link to="/allocations">Back to your allocations</Link>
            </p>
          ) : null}
        </>
      ) : (
        <Loading label="Loading allocation" />
      )}
    </Page>
  );
}
