// /admin/reconciliation: where the nodes' reports and the allocations (and so
// billing) disagree. Open findings first; resolved ones on request.

import { useState } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import type { components } from "../../../../shared/api/schema";
import { useApi } from "../../../../shared/data/ApiContext";
import { unwrap } from "../../../../shared/data/client";
import { formatDateTime, shortId } from "../../../../shared/i18n/format";
import { Page, StatusBadge } from "../../../../shared/ui/Page";
import { Pager, useCursorPager } from "../../../../shared/ui/Pager";
import { Empty, QueryView } from "../../../../shared/ui/states";

type Finding = components["schemas"]["Finding"];

const PAGE_SIZE = 50;

/** Each kind in words: what disagrees, and what an operator usually does. */
const KINDS: Record<Finding["kind"], { title: string; explanation: string }> = {
  allocation_missing_on_node: {
    title: "Billed but missing on node",
    explanation:
      "The allocation is billed as active, but its user is no longer on the node (it was force-released). Check that metering stopped and refund if needed.",
  },
  orphan_node_user: {
    title: "User on node without allocation",
    explanation:
      "The node still has an allocation user although no live allocation owns it. Remove the user from the host, or force-release the allocation.",
  },
};

function kindOf(finding: Finding) {
  return KINDS[finding.kind] ?? { title: String(finding.kind).replace(/_/g, " "), explanation: "" };
}

function FindingTable({ findings, caption }: { findings: Finding[]; caption: string }) {
  return (
    <div className="table-wrap">
      <table>
        <caption className="visually-hidden">{caption}</caption>
        <thead>
          <tr>
            <th scope="col">Finding</th>
            <th scope="col">Node</th>
            <th scope="col">Allocation</th>
            <th scope="col">Username</th>
            <th scope="col">First seen</th>
            <th scope="col">Last seen</th>
            <th scope="col">Resolved</th>
          </tr>
        </thead>
        <tbody>
          {findings.map((finding) => {
            const kind = kindOf(finding);
            return (
              <tr key={finding.id} data-testid="finding-row" data-kind={finding.kind} data-open={finding.resolved_at ? "false" : "true"}>
                <td>
                  <strong>{kind.title}</strong>
                  {kind.explanation ? <div className="muted">{kind.explanation}</div> : null}
                </td>
                <td>
                  <Link to={`/admin/fleet/${encodeURIComponent(finding.node_id)}`} aria-label={`Node ${shortId(finding.node_id)}`}>
                    <code title={finding.node_id}>{shortId(finding.node_id)}</code>
                  </Link>
                </td>
                <td>
                  {finding.allocation_id ? (
                    <code title={finding.allocation_id}>{shortId(finding.allocation_id)}</code>
                  ) : (
                    <span className="muted">none</span>
                  )}
                </td>
                <td>
                  <code>{finding.username}</code>
                </td>
                <td>{formatDateTime(finding.first_seen_at)}</td>
                <td>{formatDateTime(finding.last_seen_at)}</td>
                <td>
                  {finding.resolved_at ? (
                    <>
                      <StatusBadge status="resolved" /> {formatDateTime(finding.resolved_at)}
                    </>
                  ) : (
                    <StatusBadge status="open" />
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

function useFindings(open: boolean, cursor: string | null, enabled = true) {
  const api = useApi();
  return useQuery({
    queryKey: ["admin", "reconciliation", { open, cursor }],
    queryFn: () =>
      unwrap(api.GET("/api/v1/admin/reconciliation", { params: { query: { open, cursor: cursor ?? undefined, limit: PAGE_SIZE } } })),
    placeholderData: keepPreviousData,
    refetchInterval: 30_000,
    enabled,
  });
}

/** Resolved findings (the API's `open=false` answers all; the open ones are above). */
function ResolvedSection() {
  const pager = useCursorPager();
  const all = useFindings(false, pager.cursor);
  return (
    <section className="card" aria-labelledby="resolved-heading">
      <h2 id="resolved-heading">Resolved findings</h2>
      <QueryView
        query={all}
        loadingLabel="Loading resolved findings"
        isEmpty={(data) => data.items.length === 0}
        empty={<Empty title="No findings at all" />}
      >
        {(data) => {
          const resolved = data.items.filter((finding) => finding.resolved_at);
          return (
            <>
              {resolved.length === 0 ? (
                <Empty title={pager.page === 1 && !data.next_cursor ? "No resolved findings" : "No resolved findings on this page"} />
              ) : (
                <FindingTable findings={resolved} caption="Resolved findings, newest first" />
              )}
              <Pager pager={pager} nextCursor={data.next_cursor} label="Resolved findings" />
            </>
          );
        }}
      </QueryView>
    </section>
  );
}

export default function ReconciliationPage() {
  const pager = useCursorPager();
  const open = useFindings(true, pager.cursor);
  const [showResolved, setShowResolved] = useState(false);
  return (
    <Page title="Reconciliation">
      <p>
        A reconciliation pass compares what each node reports with the allocations table. Each disagreement stays open until
        a later pass no longer sees it.
      </p>
      <section className="card" aria-labelledby="open-heading">
        <h2 id="open-heading">Open findings</h2>
        <QueryView
          query={open}
          loadingLabel="Loading findings"
          isEmpty={(data) => data.items.length === 0 && pager.page === 1}
          empty={<Empty title="No open findings">The nodes and the allocations agree.</Empty>}
        >
          {(data) => (
            <>
              <FindingTable findings={data.items} caption="Open findings, newest first" />
              <Pager pager={pager} nextCursor={data.next_cursor} label="Open findings" />
            </>
          )}
        </QueryView>
      </section>
      <div className="toolbar">
        <label className="checkbox">
          <input type="checkbox" checked={showResolved} onChange={(event) => setShowResolved(event.target.checked)} />
          Show resolved findings
        </label>
      </div>
      {showResolved ? <ResolvedSection /> : null}
    </Page>
  );
}
